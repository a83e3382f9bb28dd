"""POST /v1/classify with the image as the whole body (`Content-Type: image/...`): the same
answer, checks, limits and errors as the multipart form, its other fields in the query string."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from service.core.config import Settings
from tests.helpers.images import COLOURS, image_bytes


@pytest.fixture
def sqlite_client(
    sqlite_url: str, make_settings: Callable[..., Settings], make_client: Callable[..., Any]
) -> Any:
    return make_client(make_settings(sqlite_url))


def raw(client: Any, data: bytes, kind: str = "image/png", **params: Any) -> Any:
    return client.post("/v1/classify", content=data, headers={"content-type": kind}, params=params)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_raw_body_answers_as_multipart(sqlite_client: Any, fmt: str) -> None:
    query = image_bytes(COLOURS["green"], seed=3, fmt=fmt)
    kind = f"image/{fmt.lower()}"
    labels = ["green", "car", "dog"]
    multipart = sqlite_client.post(
        "/v1/classify",
        files={"image": (f"q.{fmt.lower()}", query, kind)},
        data={"labels": labels, "top_k": "2"},
    )
    assert multipart.status_code == 200, multipart.text
    for declared in (kind, "application/octet-stream", f"{kind}; charset=binary"):
        response = raw(sqlite_client, query, declared, labels=labels, top_k=2)
        assert response.status_code == 200, response.text
        assert response.json() == multipart.json()
    assert len(multipart.json()["predictions"]) == 2


def test_query_fields_are_checked_as_form_fields(sqlite_client: Any) -> None:
    query = image_bytes(COLOURS["blue"], seed=1)
    abstained = raw(sqlite_client, query, labels=["cat", "dog"], abstain="true")
    assert abstained.status_code == 200, abstained.text
    assert all(p["accepted"] for p in abstained.json()["predictions"])
    cases: list[tuple[dict[str, Any], str]] = [
        ({"top_k": 0}, "top_k"),
        ({"top_k": [1, 2]}, "sent 2 times"),
        ({"labels": [f"w{i}" for i in range(300)]}, "at most 256 labels"),
        ({"abstain": "maybe"}, "abstain"),
    ]
    for params, fragment in cases:
        response = raw(sqlite_client, query, **params)
        assert response.status_code == 422, (params, response.text)
        assert fragment in response.json()["detail"], (params, response.text)


@pytest.mark.parametrize(
    ("data", "kind", "status", "fragment"),
    [
        (b"", "image/png", 400, "empty"),
        (b"not an image", "image/png", 400, "not a readable image"),
        (b"\x89PNG" + b"0" * 200_001, "image/png", 413, "larger than"),
        (b"hello", "text/plain", 415, "an image"),
    ],
    ids=["empty", "undecodable", "too large", "not an image type"],
)
def test_raw_body_errors(
    sqlite_client: Any, data: bytes, kind: str, status: int, fragment: str
) -> None:
    response = raw(sqlite_client, data, kind)
    assert response.status_code == status, response.text
    assert fragment in response.json()["detail"]


def test_raw_body_is_scoped_and_authenticated_as_the_form(
    sqlite_url: str, make_settings: Callable[..., Settings], make_client: Callable[..., Any]
) -> None:
    client = make_client(make_settings(sqlite_url, client_keys=["k-client-0123456789abcdef"]))
    query = image_bytes(COLOURS["green"])
    assert raw(client, query).status_code == 401
    headers = {"content-type": "image/png", "authorization": "Bearer k-client-0123456789abcdef"}
    ok = client.post("/v1/classify", content=query, headers=headers)
    assert ok.status_code == 200, ok.text
    other = client.post("/v1/classify", content=query, headers=headers, params={"tenant": "b"})
    assert other.status_code == 403
