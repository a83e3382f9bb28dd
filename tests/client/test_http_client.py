"""`liteembed_client` against a real server process: results, errors, waiting, retries."""

from __future__ import annotations

import asyncio
import io
import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest
from PIL import Image

from cli.serve_process import free_port
from liteembed_client import (
    AsyncClient,
    BadRequest,
    Classification,
    ClassInfo,
    Client,
    Conflict,
    ConnectionFailed,
    Embeddings,
    Forbidden,
    InvalidRequest,
    NotFound,
    PayloadTooLarge,
    RetryPolicy,
    ServiceUnavailable,
    Unauthorized,
    UnsupportedMediaType,
)
from tests.helpers.images import COLOURS, image_bytes
from tests.helpers.live_server import REPO, LiveServer

T = TypeVar("T")


def write_images(folder: Path, colour: str, count: int = 4, first_seed: int = 0) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"{colour}{first_seed + i}.png"
        path.write_bytes(image_bytes(COLOURS[colour], seed=first_seed + i))
        paths.append(path)
    return paths


def eventually(get: Callable[[], T], good: Callable[[T], bool], timeout: float = 30) -> T:
    deadline = time.monotonic() + timeout
    while not good(value := get()):
        assert time.monotonic() < deadline, value
        time.sleep(0.1)
    return value


def test_importing_the_client_loads_neither_torch_nor_the_service() -> None:
    code = (
        "import sys, liteembed_client; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'open_clip', 'service'}))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True
    )
    assert result.stdout.strip() == "[]", result.stdout + result.stderr


def test_register_wait_classify_export_list_delete(live_server: LiveServer, tmp_path: Path) -> None:
    seen: list[ClassInfo] = []
    with Client(live_server.url, live_server.admin_key) as client:
        green = client.register_class(
            "sync-zorb", write_images(tmp_path / "green", "green"), hints=["star"]
        )
        magenta = client.register_class(
            "sync-plax", [p.read_bytes() for p in write_images(tmp_path / "m", "magenta")]
        )
        assert isinstance(green, ClassInfo)
        assert (green.name, green.status, green.hints) == ("sync-zorb", "queued", ["star"])

        ready = client.wait_ready(green.id, timeout=120, poll_interval=0.1, on_update=seen.append)
        client.wait_ready(magenta.id, timeout=120, poll_interval=0.1)
        assert ready.status == "ready" and ready.finished and ready.dim
        assert seen[-1].status == "ready" and all(s.id == green.id for s in seen)

        query = ("query.png", image_bytes(COLOURS["green"], seed=500))
        labels = ["sync-zorb", "sync-plax", "banana"]
        # The API process takes up newly ready classes within its refresh period.
        labelled = eventually(
            lambda: client.classify(query, labels=labels, top_k=3),
            lambda result: all(p.class_id for p in result.predictions if p.label != "banana"),
        )
        assert labelled.top is not None and labelled.top.class_id == green.id
        ids = {p.label: p.class_id for p in labelled.predictions}
        assert ids == {"sync-zorb": green.id, "sync-plax": magenta.id, "banana": None}

        embedding = client.get_embedding(green.id)
        assert len(embedding.text_feature) == embedding.dim == ready.dim

        # Several images in one request: one typed result per image, in order.
        queries = [
            image_bytes(COLOURS[c], seed=600 + i) for i, c in enumerate(("magenta", "green"))
        ]
        many = client.classify_many(queries, labels=labels, top_k=2)
        assert [type(r) for r in many] == [Classification, Classification]
        assert [r.top.class_id for r in many if r.top] == [magenta.id, green.id]
        # The same predictions as alone, up to float rounding (a batch of two is encoded as
        # one model batch, whose float32 kernels may round the last bit differently).
        alone = client.classify(queries[1], labels=labels, top_k=2).predictions
        assert [(p.label, p.class_id) for p in many[1].predictions] == [
            (p.label, p.class_id) for p in alone
        ]
        assert [p.score for p in many[1].predictions] == pytest.approx(
            [p.score for p in alone], rel=1e-5, abs=1e-9
        )

        features = client.embed(images=queries, texts=["a sketch of a {sync-zorb}.", "a dog"])
        assert isinstance(features, Embeddings) and features.dim == ready.dim
        assert len(features.images) == len(features.texts) == 2
        assert np.linalg.norm(features.texts[0]) == pytest.approx(1.0, abs=1e-3)
        with pytest.raises(InvalidRequest) as unknown:
            client.embed(texts=["a {nobody}"])
        assert "nobody" in unknown.value.detail
        assert np.linalg.norm(embedding.text_feature) == pytest.approx(1.0, abs=1e-3)

        ready_page = client.list_classes(status="ready", limit=1000)
        assert {green.id, magenta.id} <= {c.id for c in ready_page.items}
        assert ready_page.total == len(ready_page.items)
        assert {green.id, magenta.id} <= {c.id for c in client.iter_classes(page_size=1)}

        client.delete_class(green.id)
        with pytest.raises(NotFound) as missing:
            client.get_class(green.id)
        assert green.id in missing.value.detail
        client.delete_class(magenta.id)


def test_the_async_client_does_the_same(live_server: LiveServer, tmp_path: Path) -> None:
    images = write_images(tmp_path, "yellow")

    async def scenario() -> tuple[ClassInfo, Any, list[str]]:
        async with AsyncClient(live_server.url, live_server.admin_key) as client:
            created = await client.register_class("async-quim", images)
            ready = await client.wait_ready(created.id, timeout=120, poll_interval=0.1)
            deadline = time.monotonic() + 30
            while True:  # until the API process has taken the new class up
                result = await client.classify(images[0], labels=["async-quim", "car"], top_k=2)
                if any(p.class_id for p in result.predictions) or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.1)
            listed = [c.id async for c in client.iter_classes(status="ready", page_size=1)]
            many = await client.classify_many(images[:2], labels=["async-quim", "car"], top_k=2)
            assert [r.top.label for r in many if r.top] == ["async-quim", "async-quim"]
            features = await client.embed(images=images[:1], texts=["a sketch of a {async-quim}."])
            assert len(features.images[0]) == len(features.texts[0]) == features.dim
            await client.delete_class(created.id)
            with pytest.raises(NotFound):
                await client.get_class(created.id)
            return ready, result, listed

    ready, result, listed = asyncio.run(scenario())
    assert ready.status == "ready"
    assert result.top.label == "async-quim" and result.top.class_id == ready.id
    assert ready.id in listed


def test_errors_are_typed_from_status_and_detail(live_server: LiveServer, tmp_path: Path) -> None:
    images = write_images(tmp_path, "blue", count=2)
    with Client(live_server.url) as anonymous, pytest.raises(Unauthorized) as no_key:
        anonymous.get_class("x")
    assert "Bearer" in no_key.value.detail and no_key.value.status_code == 401

    with Client(live_server.url, live_server.client_key) as client:
        with pytest.raises(Forbidden):
            client.list_classes(tenant="elsewhere")
        with pytest.raises(NotFound):
            client.get_class("no-such-id")
        created = client.register_class("errors-blue", images)
        with pytest.raises(Conflict) as duplicate:
            client.register_class("Errors-Blue", images)
        assert created.id in duplicate.value.detail
        with pytest.raises(InvalidRequest) as bad_name:
            client.register_class("!!!", images)
        assert "name" in bad_name.value.detail
        with pytest.raises(BadRequest) as garbage:
            client.register_class("errors-garbage", [("bad.png", b"not an image at all")])
        assert "bad.png" in garbage.value.detail
        big = np.random.default_rng(0).integers(0, 255, (300, 300, 3), dtype=np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(big).save(buffer, format="PNG")  # ~270 kB, over the 200 kB limit
        with pytest.raises(PayloadTooLarge):
            client.classify(("big.png", buffer.getvalue()))
        icon = io.BytesIO()
        Image.new("RGB", (16, 16), "red").save(icon, format="ICO")
        with pytest.raises(UnsupportedMediaType) as refused:
            client.classify(("icon.png", icon.getvalue()))
        assert "ICO" in refused.value.detail
    # A rejected request changed nothing: the one class registered is the only one.
    with Client(live_server.url, live_server.admin_key) as admin:
        names = {c.name for c in admin.iter_classes()}
        assert "errors-blue" in names and "errors-garbage" not in names
        admin.delete_class(created.id)


# --- retries, against a scripted HTTP server ---------------------------------------------------


class ScriptedServer:
    """Answers each request with the next scripted (status, headers, body); records them."""

    def __init__(self, script: list[tuple[int, dict[str, str], Any]]) -> None:
        self.script = list(script)
        self.requests: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                self.rfile.read(length)
                outer.requests.append(f"{self.command} {self.path}")
                status, headers, body = outer.script.pop(0)
                payload = json.dumps(body).encode()
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_DELETE = _answer

            def log_message(self, *_args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def scripted() -> Iterator[Any]:
    servers: list[ScriptedServer] = []

    def make(*script: tuple[int, dict[str, str], Any]) -> ScriptedServer:
        servers.append(ScriptedServer(list(script)))
        return servers[-1]

    yield make
    for server in servers:
        server.close()


CLASS_BODY = {
    "id": "c1",
    "name": "zorb",
    "model": "m",
    "status": "ready",
    "progress": 1.0,
    "attempts": 1,
    "error": None,
    "hints": [],
    "confusers": [],
    "dim": 4,
    "created_at": "2026-01-01T00:00:00Z",
    "updated_at": "2026-01-01T00:00:00Z",
}
NOT_READY = {"detail": "model not loaded; try again shortly"}


def recording(client: Client) -> list[float]:
    waits: list[float] = []
    client._sleep = waits.append  # the waits are checked, not slept
    return waits


def test_503_is_retried_after_the_retry_after_it_names(scripted: Any) -> None:
    server = scripted(
        (503, {"Retry-After": "2"}, NOT_READY),
        (200, {}, CLASS_BODY),
        (503, {"Retry-After": "Thu, 01 Jan 2099 00:00:00 GMT"}, NOT_READY),
    )
    with Client(server.url, "k", retry=RetryPolicy(max_retries=3, max_wait=30)) as client:
        waits = recording(client)
        assert client.get_class("c1").name == "zorb"
        assert waits == [2.0]
        # A Retry-After beyond the longest wait is not waited for: it is raised, with its value.
        with pytest.raises(ServiceUnavailable) as too_long:
            client.get_class("c1")
        assert waits == [2.0] and too_long.value.retry_after > 30
        assert "try again" in too_long.value.detail
    assert server.requests == ["GET /v1/classes/c1"] * 3


def test_503_retries_are_bounded_and_back_off(scripted: Any) -> None:
    server = scripted(*[(503, {}, NOT_READY)] * 3)
    policy = RetryPolicy(max_retries=2, backoff=0.5)
    with Client(server.url, "k", retry=policy) as client:
        waits = recording(client)
        with pytest.raises(ServiceUnavailable) as exhausted:
            client.get_class("c1")
    assert waits == [0.5, 1.0]
    assert len(server.requests) == 3 and exhausted.value.retry_after is None


def test_a_retried_upload_sends_its_images_again(scripted: Any, tmp_path: Path) -> None:
    server = scripted((503, {"Retry-After": "0"}, NOT_READY), (202, {}, CLASS_BODY))
    path = write_images(tmp_path, "green", count=1)[0]
    with Client(server.url, "k") as client:
        waits = recording(client)
        assert client.register_class("zorb", [path]).id == "c1"
    assert waits == [0.0] and server.requests == ["POST /v1/classes"] * 2


def test_a_refused_connection_is_retried_then_raised() -> None:
    with Client(f"http://127.0.0.1:{free_port()}", retry=RetryPolicy(max_retries=2)) as client:
        waits = recording(client)
        with pytest.raises(ConnectionFailed):
            client.get_class("c1")
    assert waits == [0.5, 1.0]


def test_the_async_client_retries_the_same_way(scripted: Any) -> None:
    server = scripted((503, {"Retry-After": "3"}, NOT_READY), (200, {}, CLASS_BODY))
    waits: list[float] = []

    async def record(seconds: float) -> None:
        waits.append(seconds)

    async def scenario() -> ClassInfo:
        async with AsyncClient(server.url, "k") as client:
            client._sleep = record
            return await client.get_class("c1")

    assert asyncio.run(scenario()).id == "c1"
    assert waits == [3.0]
