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
