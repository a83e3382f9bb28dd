"""The per-request pixel budget: the images of one request may decode to at most
MAX_REQUEST_PIXELS in all; past it, a 413 that says so, and nothing is written."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from service.core.config import Settings
from tests.helpers.images import COLOURS, image_bytes

# Two 48x48 images fit (4608 pixels), a third does not.
BUDGET = 5000


def _images(count: int, field: str) -> list[tuple[str, Any]]:
    return [
        (field, (f"{i}.png", image_bytes(COLOURS["green"], seed=i), "image/png"))
        for i in range(count)
    ]


def test_registration_over_the_pixel_budget_is_413_and_changes_nothing(
    sqlite_url: str, make_settings: Callable[..., Settings], make_client: Any, db_snapshot: Any
) -> None:
    client = make_client(make_settings(sqlite_url, max_request_pixels=BUDGET))
    before = db_snapshot(sqlite_url)
    response = client.post("/v1/classes", data={"name": "Tea"}, files=_images(3, "images"))
    assert response.status_code == 413, response.text
    detail = response.json()["detail"]
    assert "images[2]" in detail or "2.png" in detail
    assert f"at most {BUDGET}" in detail and "per request" in detail
    assert db_snapshot(sqlite_url) == before
    fits = client.post("/v1/classes", data={"name": "Tea"}, files=_images(2, "images"))
    assert fits.status_code == 202, fits.text


def test_classify_over_the_pixel_budget_is_413(
    sqlite_url: str, make_settings: Callable[..., Settings], make_client: Any
) -> None:
    client = make_client(make_settings(sqlite_url, max_request_pixels=BUDGET))
    response = client.post("/v1/classify", files=_images(3, "images"))
    assert response.status_code == 413, response.text
    assert "per request" in response.json()["detail"]
    assert client.post("/v1/classify", files=_images(2, "images")).status_code == 200
