"""GET /v1/classes/{id}/thumbnail: a small JPEG of the class's first image."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from PIL import Image


def png(colour: tuple[int, int, int], size: tuple[int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def test_thumbnail_is_the_first_image_scaled_down(client: Any) -> None:
    images = [
        ("images", ("first.png", png((200, 30, 30), (300, 150)), "image/png")),
        ("images", ("second.png", png((30, 30, 200), (64, 64)), "image/png")),
    ]
    created = client.post("/v1/classes", data={"name": "zorb"}, files=images)
    assert created.status_code == 202, created.text
    class_id = created.json()["id"]

    response = client.get(f"/v1/classes/{class_id}/thumbnail")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/jpeg"
    thumb = Image.open(io.BytesIO(response.content))
    assert (thumb.format, thumb.size) == ("JPEG", (128, 64))  # aspect kept, longest side 128
    red, green, blue = np.asarray(thumb.convert("RGB"), dtype=float).mean(axis=(0, 1))
    assert red > 150 and green < 80 and blue < 80  # the first image, not the second

    small = client.get(f"/v1/classes/{class_id}/thumbnail", params={"size": 16})
    assert Image.open(io.BytesIO(small.content)).size == (16, 8)


def test_thumbnail_of_an_unknown_class_or_a_bad_size_is_refused(client: Any) -> None:
    missing = client.get("/v1/classes/no-such-id/thumbnail")
    assert missing.status_code == 404 and "no-such-id" in missing.json()["detail"]
    created = client.post(
        "/v1/classes",
        data={"name": "plax"},
        files=[("images", ("a.png", png((1, 2, 3), (32, 32)), "image/png"))],
    )
    class_id = created.json()["id"]
    for size in ("0", "4096", "big"):
        response = client.get(f"/v1/classes/{class_id}/thumbnail", params={"size": size})
        assert response.status_code == 422 and "size" in response.json()["detail"]


def test_a_huge_upload_is_decoded_once_per_process(
    database_url: str, make_settings: Any, make_client: Any
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    client = make_client(make_settings(database_url, max_image_pixels=36_000_000))
    # 36 megapixels in about 100 KB: the decode is the cost, not the bytes.
    huge = png((20, 160, 40), (6000, 6000))
    created = client.post(
        "/v1/classes", data={"name": "huge"}, files=[("images", ("h.png", huge, "image/png"))]
    )
    assert created.status_code == 202, created.text
    url = f"/v1/classes/{created.json()['id']}/thumbnail"
    # The registering process kept the copy it decoded to check the upload.
    assert client.get(url, params={"size": 32}).status_code == 200
    assert client.app.state.thumbnails.decodes == 0
    # Another process (a fresh cache) decodes it once, however many ask at the same time.
    from service.thumbnails import ThumbnailCache

    cache = client.app.state.thumbnails = ThumbnailCache(32 * 1024 * 1024)
    before = cache.decodes
    with ThreadPoolExecutor(8) as pool:  # concurrent first requests share one decode
        answers = list(pool.map(lambda size: client.get(url, params={"size": size}), [16] * 8))
    answers += [client.get(url, params={"size": size}) for size in (16, 64, 128, 512)]
    assert all(a.status_code == 200 for a in answers)
    assert [Image.open(io.BytesIO(a.content)).size for a in answers[-4:]] == [
        (16, 16),
        (64, 64),
        (128, 128),
        (512, 512),
    ]
    assert cache.decodes == before + 1


def test_the_cache_keeps_within_its_byte_budget() -> None:
    from service.thumbnails import ThumbnailCache

    cache = ThumbnailCache(max_bytes=300_000)  # one 256x256 master and a few JPEGs
    uploads = {f"c{i}": png((i * 20, 10, 10), (256, 256)) for i in range(5)}

    def decode(data: bytes, _min_side: int) -> Image.Image:
        return Image.open(io.BytesIO(data)).convert("RGB")

    for class_id, data in uploads.items():
        for size in (16, 32, 64):
            jpeg = cache.jpeg(class_id, size, lambda d=data: d, decode)
            assert Image.open(io.BytesIO(jpeg)).size == (size, size)
            assert cache.bytes_held <= 300_000
    assert cache.decodes == 5
