"""Many images in one /v1/classify call: one prediction list per image, in order, through the
micro-batcher in one or two model batches; a single `image` answers exactly as before."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from service.core.config import Settings
from tests.helpers.images import COLOURS, class_images, image_bytes

NAMES = {"green": "zorb", "magenta": "plax"}


@pytest.fixture
def sqlite_client(
    sqlite_url: str, make_settings: Callable[..., Settings], make_client: Callable[..., Any]
) -> Any:
    return make_client(make_settings(sqlite_url))


def trained(client: Any, wait_status: Any) -> dict[str, str]:
    """Two ready classes that the tiny model tells apart, visible to /classify; colour -> id."""
    ids = {}
    for colour, name in NAMES.items():
        response = client.post("/v1/classes", data={"name": name}, files=class_images(colour))
        assert response.status_code == 202, response.text
        ids[colour] = response.json()["id"]
    for class_id in ids.values():
        assert wait_status(client, class_id, {"ready", "failed"})["status"] == "ready"
    deadline = time.monotonic() + 10
    query = {"image": ("q.png", image_bytes(COLOURS["green"], seed=7), "image/png")}
    while len(client.post("/v1/classify", files=query).json()["predictions"]) < len(ids):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    return ids


def part(field: str, colour: str, seed: int) -> tuple[str, tuple[str, bytes, str]]:
    return (field, (f"{colour}{seed}.png", image_bytes(COLOURS[colour], seed=seed), "image/png"))


def test_images_get_one_answer_each_in_order_from_one_or_two_batches(
    sqlite_client: Any, wait_status: Any
) -> None:
    client = sqlite_client
    ids = trained(client, wait_status)
    count = client.app.state.settings.max_classify_images
    assert count == 32
    colours = [("green", "magenta")[(i // 3) % 2] for i in range(count)]  # runs of three
    files = [part("images", colour, 1000 + i) for i, colour in enumerate(colours)]

    stats = client.app.state.model_runner.stats
    batches, images = stats.batches, stats.images
    response = client.post("/v1/classify", files=files, data={"top_k": "2"})
    assert response.status_code == 200, response.text
    body = response.json()
    # Every image went through the micro-batcher, together: not one model batch per image.
    assert stats.images - images == count
    assert stats.batches - batches <= 2, stats

    assert body["model"] == "liteembed-tiny@random-0"
    assert len(body["results"]) == count
    for colour, result in zip(colours, body["results"], strict=True):
        top = result["predictions"][0]
        assert (top["label"], top["class_id"]) == (NAMES[colour], ids[colour]), result

    # One `image` answers exactly as before, and as that image's entry in a batch.
    single = client.post("/v1/classify", files=[("image", files[4][1])], data={"top_k": "2"}).json()
    assert set(single) == {"model", "predictions"}
    in_batch = body["results"][4]["predictions"]
    assert [p["class_id"] for p in single["predictions"]] == [p["class_id"] for p in in_batch]
    # Equal up to float noise: a batch of 32 runs other kernels than a batch of one.
    assert [p["score"] for p in single["predictions"]] == pytest.approx(
        [p["score"] for p in in_batch], abs=1e-5
    )

    # With labels, each image is ranked among them; the label features are shared.
    labelled = client.post(
        "/v1/classify",
        files=[part("images", "magenta", 5), part("images", "green", 6)],
        data={"labels": ["plax", "zorb", "banana"], "top_k": "3"},
    ).json()
    tops = [r["predictions"][0]["label"] for r in labelled["results"]]
    assert tops == ["plax", "zorb"], labelled


@pytest.mark.parametrize(
    ("files", "fragment"),
    [
        ([part("image", "green", 1), part("image", "green", 2)], "image was sent 2 times"),
        ([part("image", "green", 1), part("images", "green", 2)], "either"),
        ([part("images", "green", i) for i in range(33)], "at most 32 images"),
        ([("images", (None, "not a file"))], "file"),
    ],
    ids=["two image parts", "image and images", "too many", "text for a file"],
)
def test_ambiguous_or_too_many_images_are_422(
    sqlite_client: Any, files: list[Any], fragment: str
) -> None:
    stats = sqlite_client.app.state.model_runner.stats
    before = stats.images
    response = sqlite_client.post("/v1/classify", files=files)
    assert response.status_code == 422, response.text
    assert fragment in response.json()["detail"]
    assert stats.images == before  # refused before any model work


def test_one_bad_image_refuses_the_whole_batch(sqlite_client: Any) -> None:
    stats = sqlite_client.app.state.model_runner.stats
    before = stats.images
    files = [part("images", "green", 1), ("images", ("b.png", b"junk", "image/png"))]
    response = sqlite_client.post("/v1/classify", files=files)
    assert response.status_code == 400, response.text
    assert "images[1] 'b.png'" in response.json()["detail"]
    assert stats.images == before
