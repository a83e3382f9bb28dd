"""The request-size cap over real HTTP: a body too large is a 413 with a JSON `detail`, whether
it declares its length or arrives chunked (where the multipart parser reads it first)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from service.core.config import Settings
from service.runtime import RuntimeHolder
from tests.helpers.uvicorn_thread import serving

LIMIT = 1_000_000
BOUNDARY = "liteembed-test-boundary"


@pytest.fixture
def server(
    sqlite_url: str, make_settings: Callable[..., Settings], shared_runtime: RuntimeHolder
) -> Iterator[str]:
    from service.main import create_app

    app = create_app(make_settings(sqlite_url, max_request_bytes=LIMIT))
    app.state.runtime = shared_runtime
    with serving(app) as url:
        yield url


def _multipart(total: int) -> Iterator[bytes]:
    """A registration whose one image part makes the body `total` bytes or more, in 64 KiB
    chunks (a generator body: httpx sends it chunked, with no Content-Length)."""
    yield (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="name"\r\n\r\nbig\r\n'
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="images"; filename="a.png"\r\n'
        "Content-Type: image/png\r\n\r\n"
    ).encode()
    sent = 0
    chunk = b"\0" * 65536
    while sent < total:
        yield chunk
        sent += len(chunk)
    yield f"\r\n--{BOUNDARY}--\r\n".encode()


@pytest.mark.parametrize("path", ["/v1/classes", "/v1/classify"])
def test_chunked_oversize_body_is_413(server: str, path: str) -> None:
    sent_headers: dict[str, Any] = {}

    def record(request: httpx.Request) -> None:
        sent_headers.update(request.headers)

    with httpx.Client(base_url=server, timeout=30, event_hooks={"request": [record]}) as http:
        response = http.post(
            path,
            content=_multipart(3 * LIMIT),
            headers={"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"},
        )
    assert "content-length" not in sent_headers
    assert sent_headers.get("transfer-encoding") == "chunked"
    assert response.status_code == 413, response.text
    assert response.headers["content-type"] == "application/json"
    assert str(LIMIT) in response.json()["detail"]


def test_declared_oversize_body_is_413(server: str) -> None:
    body = b"".join(_multipart(2 * LIMIT))
    response = httpx.post(
        f"{server}/v1/classes",
        content=body,
        headers={"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"},
        timeout=30,
    )
    assert response.status_code == 413
    assert "larger than" in response.json()["detail"]


def test_chunked_body_under_the_cap_is_parsed(server: str) -> None:
    # The counting must not break an ordinary chunked upload: this one reaches the route
    # (and fails there, for its undecodable image, with the route's own 400).
    with httpx.Client(base_url=server, timeout=30) as http:
        response = http.post(
            "/v1/classes",
            content=_multipart(100_000),
            headers={"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"},
        )
    assert response.status_code == 400, response.text
    assert "readable" in response.json()["detail"]
