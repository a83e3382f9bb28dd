"""The fast lane (service/api/fast_lane.py): a raw-body /classify and a JSON /embeddings are
answered without FastAPI's dependency resolution, with the same answers, headers, errors and
metrics as the FastAPI routes, which still take every other request."""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from service.api import fast_lane
from service.api.deps import get_settings
from service.core.config import Settings
from tests.helpers.images import COLOURS, image_bytes

CLIENT_KEY = "k-client-0123456789abcdef"
ADMIN_KEY = "k-admin-0123456789abcdef0"


@pytest.fixture
def client(
    sqlite_url: str, make_settings: Callable[..., Settings], make_client: Callable[..., Any]
) -> Any:
    settings = make_settings(
        sqlite_url, client_keys=[CLIENT_KEY], admin_keys=[ADMIN_KEY], rate_limit="1000/minute"
    )
    return make_client(settings)


@contextmanager
def through_fastapi(client: Any) -> Iterator[None]:
    """Every request through the FastAPI routes: the lanes step aside while any dependency is
    swapped (here for itself, so nothing else changes)."""
    client.app.dependency_overrides[get_settings] = get_settings
    try:
        yield
    finally:
        client.app.dependency_overrides.clear()


def classify_raw(client: Any, key: str = CLIENT_KEY, **params: Any) -> Any:
    headers = {"content-type": "image/png", "authorization": f"Bearer {key}"}
    return client.post(
        "/v1/classify",
        content=image_bytes(COLOURS["green"], seed=2),
        headers=headers,
        params=params,
    )


def embed(client: Any, body: Any, key: str = CLIENT_KEY, **params: Any) -> Any:
    headers = {"authorization": f"Bearer {key}"}
    return client.post("/v1/embeddings", json=body, headers=headers, params=params)


def png_uri() -> str:
    data = base64.b64encode(image_bytes(COLOURS["blue"], seed=1)).decode()
    return f"data:image/png;base64,{data}"


def test_the_lanes_take_only_their_requests(client: Any) -> None:
    lanes = [r for r in client.app.router.routes if isinstance(r, fast_lane.Lane)]
    assert [lane.path for lane in lanes] == ["/v1/classify", "/v1/embeddings"]
    assert client.app.router.routes[:2] == lanes

    def scope(path: str, kind: str, query: bytes = b"", method: str = "POST") -> dict[str, Any]:
        return {
            "type": "http",
            "method": method,
            "path": path,
            "root_path": "",
            "query_string": query,
            "headers": [(b"content-type", kind.encode())],
            "app": client.app,
        }

    classify, embeddings = lanes
    assert classify.matches(scope("/v1/classify", "image/png"))[0].name == "FULL"
    assert classify.matches(scope("/v1/classify", "image/jpeg", b"tenant=a&top_k=2"))[0].name == (
        "FULL"
    )
    for other in (
        scope("/v1/classify", "multipart/form-data; boundary=x"),
        scope("/v1/classify", "application/json"),
        scope("/v1/classify:json", "image/png"),
        scope("/v1/classify", "image/png", method="GET"),
        scope("/v1/classify", "image/png", b"tenant=Not%20A%20Tenant"),
    ):
        assert classify.matches(other)[0].name == "NONE", other
    assert embeddings.matches(scope("/v1/embeddings", "application/json"))[0].name == "FULL"
    assert embeddings.matches(scope("/v1/embeddings", "text/plain"))[0].name == "NONE"
    assert "/v1/classify" in client.get("/openapi.json").json()["paths"]


def test_answers_and_headers_match_the_fastapi_routes(client: Any) -> None:
    requests: list[Callable[[], Any]] = [
        lambda: classify_raw(client, top_k=2),
        lambda: classify_raw(client, labels=["green", "red"], abstain="true"),
        lambda: embed(client, {"images": [png_uri().split(",", 1)[1]], "texts": ["a cat"]}),
        lambda: embed(client, {"input": [png_uri(), "a cat"]}),
        lambda: embed(client, {"input": "a dog", "encoding_format": "base64"}),
    ]
    for send in requests:
        lane = send()
        with through_fastapi(client):
            route = send()
        assert lane.status_code == route.status_code == 200, (lane.text, route.text)
        assert lane.json() == route.json()
        for name in ("content-type", "ratelimit-limit", "x-request-id"):
            assert name in lane.headers and name in route.headers, name
        assert lane.headers["content-type"] == route.headers["content-type"]


def test_errors_match_the_fastapi_routes(client: Any) -> None:
    requests: list[Callable[[], Any]] = [
        lambda: classify_raw(client, key="wrong"),  # 401
        lambda: classify_raw(client, tenant="other"),  # 403: a client key's own tenant only
        lambda: classify_raw(client, tenant="Not A Tenant"),  # 422 from the query validation
        lambda: classify_raw(client, top_k=0),  # 422 from the raw body's fields
        lambda: embed(client, {"input": []}),  # 422
        lambda: embed(client, {"texts": ["a {nosuch}"]}),  # 422: no such class
        lambda: embed(client, {"input": ["x"], "model": "other"}),  # 422: another model
        lambda: embed(client, [1, 2]),  # 422: not an object
    ]
    for send in requests:
        lane = send()
        with through_fastapi(client):
            route = send()
        assert lane.status_code == route.status_code >= 400, (lane.text, route.text)
        assert lane.json() == route.json()
        assert lane.headers.get("www-authenticate") == route.headers.get("www-authenticate")


def test_lane_requests_are_counted_under_their_route(client: Any) -> None:
    assert classify_raw(client).status_code == 200
    assert embed(client, {"input": "a cat"}).status_code == 200
    metrics = client.get("/metrics", headers={"authorization": f"Bearer {ADMIN_KEY}"}).text
    for path in ("/v1/classify", "/v1/embeddings"):
        assert (
            f'liteembed_http_requests_total{{method="POST",route="{path}",status="200"}}' in metrics
        )
