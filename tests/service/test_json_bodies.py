"""JSON bodies with base64 images: the same validation, limits and errors as multipart, on the
canonical paths and on the JSON operations of the OpenAPI document (`:json`)."""

from __future__ import annotations

import base64
import time
from collections.abc import Callable
from typing import Any

import pytest

from service.core.config import Settings
from tests.helpers.images import COLOURS, image_bytes
from tests.service.test_api_errors import REGISTER_CASES


@pytest.fixture
def sqlite_client(
    sqlite_url: str, make_settings: Callable[..., Settings], make_client: Callable[..., Any]
) -> Any:
    return make_client(make_settings(sqlite_url))


def b64(data: bytes, kind: str | None = None) -> str:
    text = base64.b64encode(data).decode()
    return f"data:{kind};base64,{text}" if kind else text


def as_json(data: dict[str, Any], files: list[Any]) -> dict[str, Any]:
    """A multipart register case as the equivalent JSON body (the declared type as a data URL)."""
    body: dict[str, Any] = {k: v for k, v in data.items() if k != "hints"}
    if "hints" in data:
        body["hints"] = [data["hints"]]
    if files:
        body["images"] = [b64(content, kind) for _, (_, content, kind) in files]
    return body


@pytest.mark.parametrize("path", ["/v1/classes", "/v1/classes:json"])
@pytest.mark.parametrize(
    ("data", "files", "status", "fragment"),
    [c[1:] for c in REGISTER_CASES],
    ids=[c[0] for c in REGISTER_CASES],
)
def test_json_registration_fails_as_multipart_does(
    sqlite_client: Any,
    sqlite_url: str,
    db_snapshot: Any,
    path: str,
    data: Any,
    files: Any,
    status: int,
    fragment: str,
) -> None:
    before = db_snapshot(sqlite_url)
    response = sqlite_client.post(path, json=as_json(data, files))
    assert response.status_code == status, response.text
    assert fragment in response.json()["detail"]
    assert db_snapshot(sqlite_url) == before


def test_json_registration_and_classification(sqlite_client: Any, wait_status: Any) -> None:
    client = sqlite_client
    shots = [b64(image_bytes(COLOURS["green"], seed=i)) for i in range(4)]
    response = client.post(
        "/v1/classes:json", json={"name": "zorb", "images": shots, "hints": ["green"]}
    )
    assert response.status_code == 202, response.text
    assert response.headers["location"] == f"/v1/classes/{response.json()['id']}"
    ready = wait_status(client, response.json()["id"], {"ready", "failed"})
    assert ready["status"] == "ready" and ready["hints"] == ["green"]

    query = image_bytes(COLOURS["green"], seed=50)
    deadline = time.monotonic() + 10
    while True:  # until /classify has taken the new class up (its refresh period)
        multipart = client.post(
            "/v1/classify",
            files={"image": ("q.png", query, "image/png")},
            data={"labels": ["zorb", "car"]},
        ).json()
        if any(p["class_id"] for p in multipart["predictions"]):
            break
        assert time.monotonic() < deadline, multipart
        time.sleep(0.05)
    for path in ("/v1/classify", "/v1/classify:json"):
        single = client.post(path, json={"image": b64(query), "labels": ["zorb", "car"]})
        assert single.status_code == 200, single.text
        assert single.json() == multipart
        batch = client.post(
            path, json={"images": [b64(query, "image/png")] * 2, "labels": ["zorb", "car"]}
        ).json()
        # Equal up to float rounding: a batch of two images is encoded as one model batch,
        # whose float32 kernels may round the last bit differently from a batch of one.
        assert [r["predictions"] for r in batch["results"]] == [
            approx_predictions(multipart["predictions"])
        ] * 2


@pytest.mark.parametrize("path", ["/v1/classify", "/v1/classify:json"])
@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        ({"image": "https://example.com/cat.png"}, 422, "URLs are not fetched"),
        ({"images": ["ftp://example.com/cat.png"]}, 422, "URLs are not fetched"),
        ({"image_url": "https://example.com/cat.png"}, 422, "URLs are not fetched"),
        ({"image": "not base64!"}, 422, "not valid base64"),
        ({"image": b64(b"junk")}, 400, "not a readable image"),
        ({"image": b64(b"junk", "text/plain")}, 415, "not an image type"),
        ({"image": b64(b"x", "image/png"), "top_k": 0}, 422, "top_k"),
        ({"image": b64(b"x"), "colour": "red"}, 422, "colour"),
        ({"labels": ["a"]}, 422, "image"),
        ({"image": b64(b"x"), "images": [b64(b"x")]}, 422, "either"),
        ({"images": [b64(b"x")] * 33}, 422, "at most 32"),
        ([b64(b"x")], 422, "object"),
    ],
    ids=[
        "url",
        "url in images",
        "url field",
        "bad base64",
        "undecodable",
        "text type",
        "top_k 0",
        "unknown field",
        "no image",
        "both",
        "too many",
        "not an object",
    ],
)
def test_bad_json_classify(
    sqlite_client: Any, path: str, body: Any, status: int, fragment: str
) -> None:
    response = sqlite_client.post(path, json=body)
    assert response.status_code == status, response.text
    assert fragment in response.json()["detail"]


def test_base64_length_is_checked_before_decoding(sqlite_client: Any) -> None:
    limit = sqlite_client.app.state.settings.max_image_bytes
    # Not even base64: decoding it first would answer 422; its length alone makes it too large.
    too_long = "!" * (limit * 4 // 3 + 8)
    response = sqlite_client.post("/v1/classify", json={"image": too_long})
    assert response.status_code == 413, response.text
    assert f"larger than {limit} bytes" in response.json()["detail"]
    # Exactly at the limit is fine as far as size goes (the bytes are then not an image).
    at_limit = b64(b"\0" * limit)
    assert sqlite_client.post("/v1/classify", json={"image": at_limit}).status_code == 400


def test_invalid_json_or_another_media_type(sqlite_client: Any) -> None:
    broken = sqlite_client.post(
        "/v1/classify", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert broken.status_code == 422 and "JSON" in broken.json()["detail"]
    other = sqlite_client.post(
        "/v1/classify", content=b"<x/>", headers={"content-type": "application/xml"}
    )
    assert other.status_code == 415 and "application/xml" in other.json()["detail"]


def approx_predictions(predictions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The same labels and ids, each score and similarity to float32 precision."""
    return [
        {
            **p,
            "score": pytest.approx(p["score"], rel=1e-5, abs=1e-9),
            "similarity": pytest.approx(p["similarity"], rel=1e-5, abs=1e-6),
        }
        for p in predictions
    ]
