"""Bodies built to cost the server: count limits apply to what was sent (duplicates included),
JSON too deep or too long for its limits is a 4xx with `detail` before the rest is read, and an
error no handler takes is still a JSON 500 with the request's id."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any

import pytest

from service.api.json_reader import JsonRefused, TooManyItems, read_json
from service.core.config import Settings
from tests.helpers.images import COLOURS, image_bytes


@pytest.fixture
def sqlite_client(
    sqlite_url: str, make_settings: Callable[..., Settings], make_client: Callable[..., Any]
) -> Any:
    return make_client(make_settings(sqlite_url))


def png() -> str:
    return base64.b64encode(image_bytes(COLOURS["green"], seed=1)).decode()


def raw_json(client: Any, path: str, text: str) -> Any:
    return client.post(path, content=text, headers={"Content-Type": "application/json"})


# (route, field, body with that field's value replaced by `{}`)
DUPLICATED_FIELDS = [
    ("/v1/classify", "labels", '{"image": "%s", "labels": %s}'),
    ("/v1/classes", "hints", '{"name": "zorb", "images": ["%s"], "hints": %s}'),
    ("/v1/classes", "confusers", '{"name": "zorb", "images": ["%s"], "confusers": %s}'),
]


@pytest.mark.parametrize(("path", "field", "template"), DUPLICATED_FIELDS)
def test_copies_of_one_word_count_against_the_limit(
    sqlite_client: Any, sqlite_url: str, db_snapshot: Any, path: str, field: str, template: str
) -> None:
    before = db_snapshot(sqlite_url)
    # 200 copies: one word after de-duplication, but 200 as sent (limits: 16 hints, 256 labels).
    copies = 300 if field == "labels" else 200
    body = template % (png(), json.dumps(["star"] * copies))
    response = raw_json(sqlite_client, path, body)
    assert response.status_code == 422, response.text
    assert "at most" in response.json()["detail"] and field in response.json()["detail"]
    assert db_snapshot(sqlite_url) == before


@pytest.mark.parametrize("field", ["hints", "confusers"])
def test_multipart_copies_count_too(sqlite_client: Any, field: str) -> None:
    response = sqlite_client.post(
        "/v1/classes",
        data={"name": "zorb", field: ["star"] * 17},
        files=[("images", ("a.png", image_bytes(COLOURS["green"], seed=1), "image/png"))],
    )
    assert response.status_code == 422, response.text
    assert response.json()["detail"] == f"at most 16 {field} are allowed, got 17"


def test_multipart_label_copies_count(sqlite_client: Any) -> None:
    response = sqlite_client.post(
        "/v1/classify",
        data={"labels": ["star"] * 257},
        files={"image": ("a.png", image_bytes(COLOURS["green"], seed=1), "image/png")},
    )
    assert response.status_code == 422, response.text
    assert response.json()["detail"] == "at most 256 labels are allowed, got 257"


def test_texts_count_as_sent(sqlite_client: Any) -> None:
    response = sqlite_client.post("/v1/embeddings", json={"texts": ["a star"] * 257})
    assert response.status_code == 422, response.text
    assert "at most 256 texts" in response.json()["detail"]


def test_two_million_duplicate_labels_are_refused_before_the_rest_is_read() -> None:
    raw = b'{"labels": [' + b",".join([b'"a"'] * 2_000_000) + b'], "image": "x"}'
    with pytest.raises(TooManyItems) as refused:
        read_json(raw, field_limits={"labels": 256, "images": 32}, other_limit=32)
    assert refused.value.field == "labels" and refused.value.limit == 256


@pytest.mark.parametrize("depth", [1_000, 5_000, 100_000])
@pytest.mark.parametrize("path", ["/v1/classify", "/v1/classes", "/v1/embeddings"])
def test_deep_json_is_a_422_with_a_request_id(sqlite_client: Any, path: str, depth: int) -> None:
    body = '{"images": ' + "[" * depth + "]" * depth + "}"
    response = raw_json(sqlite_client, path, body)
    assert response.status_code == 422, response.text
    assert "nested deeper than" in response.json()["detail"]
    assert response.headers["x-request-id"]


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("{", "expecting a property name"),
        ('{"labels": ["a",]}', "expecting a value"),
        ('{"a": 1} trailing', "extra data"),
        ('{"a": NaN}', "expecting a value"),
        ('{"a": "unterminated', "Unterminated string"),
    ],
)
def test_invalid_json_is_a_422_naming_the_problem(
    sqlite_client: Any, text: str, reason: str
) -> None:
    response = raw_json(sqlite_client, "/v1/classify", text)
    assert response.status_code == 422
    assert reason in response.json()["detail"]
    assert response.json()["errors"][0]["type"] == "json_invalid"


def test_the_reader_reads_what_json_reads() -> None:
    document = {
        "name": 'zörb \u00e9 \\ " /',
        "images": ["AAAA", "data:image/png;base64,AAAA"],
        "labels": ["a", "b"],
        "top_k": 3,
        "x": [1.5, -2, 3e4, None, True, False, {"nested": []}],
    }
    for text in (json.dumps(document), json.dumps(document, indent=2, ensure_ascii=False)):
        limits = {"images": 32, "labels": 256}
        assert read_json(text.encode(), field_limits=limits, other_limit=32) == document


def test_a_body_of_many_small_arrays_is_bounded_as_a_whole() -> None:
    raw = json.dumps({"x": [[1] * 8] * 8, "y": [[1] * 8] * 8}).encode()
    with pytest.raises(JsonRefused, match="more values"):
        read_json(raw, field_limits={"labels": 4}, other_limit=8)


def test_an_unhandled_error_is_a_json_500_with_a_request_id(sqlite_client: Any) -> None:
    from service.api.deps import get_settings

    def broken() -> Settings:
        raise RuntimeError("a bug")

    sqlite_client.app.dependency_overrides[get_settings] = broken
    try:
        response = sqlite_client.post(
            "/v1/classify", json={"image": png()}, headers={"X-Request-ID": "bug-1"}
        )
    finally:
        sqlite_client.app.dependency_overrides.clear()
    assert response.status_code == 500
    assert response.json() == {"detail": "internal server error"}
    assert response.headers["x-request-id"] == "bug-1"


def test_a_large_body_to_a_small_body_route_is_refused_before_parsing(sqlite_client: Any) -> None:
    # FastAPI would parse it on the event loop before the admin-key check runs.
    body = '{"tenant": "acme", "role": "client", "x": [' + ",".join(['"a"'] * 100_000) + "]}"
    response = raw_json(sqlite_client, "/v1/keys", body)
    assert response.status_code == 413, response.text
    assert "larger than 65536 bytes" in response.json()["detail"]
