"""PostgreSQL or Redis going away while the API runs (real HTTP, real servers behind a TCP proxy
the test cuts): routes answer 503 JSON with `Retry-After` on the same keep-alive connection, the
log says it once, and everything works again when the server is back, without a restart."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy.engine import make_url

from benchmarks.tcp_proxy import TcpProxy, tcp_proxy
from service.core.config import Settings
from service.runtime import RuntimeHolder
from tests.helpers.images import COLOURS, image_bytes
from tests.helpers.uvicorn_thread import serving

GOOD = ("a.png", image_bytes(COLOURS["green"]), "image/png")
Served = tuple[str, TcpProxy]


def _through(proxy: TcpProxy, url: str) -> str:
    return (
        make_url(url).set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    )


def _serve(settings: Settings, runtime: RuntimeHolder) -> Any:
    from service.main import create_app

    app = create_app(settings)
    app.state.runtime = runtime
    return serving(app)


@pytest.fixture
def postgres_behind_proxy(
    postgres_database: str, make_settings: Callable[..., Settings], shared_runtime: RuntimeHolder
) -> Iterator[Served]:
    target = make_url(postgres_database)
    with tcp_proxy(target.host or "127.0.0.1", target.port or 5432) as proxy:
        settings = make_settings(_through(proxy, postgres_database))
        with _serve(settings, shared_runtime) as url:
            yield url, proxy


@pytest.fixture
def redis_behind_proxy(
    sqlite_url: str,
    redis_server_url: str,
    redis_namespace: str,
    make_settings: Callable[..., Settings],
    shared_runtime: RuntimeHolder,
) -> Iterator[Served]:
    target = make_url(redis_server_url)
    with tcp_proxy(target.host or "127.0.0.1", target.port or 6379) as proxy:
        settings = make_settings(
            sqlite_url,
            redis_url=_through(proxy, redis_server_url),
            redis_namespace=redis_namespace,
        )
        with _serve(settings, shared_runtime) as url:
            yield url, proxy


def _client_port(response: httpx.Response) -> int:
    """The local port of the connection the response came on (same port: same connection)."""
    return int(response.extensions["network_stream"].get_extra_info("client_addr")[1])


def _problems(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.mark.postgres
def test_database_outage_is_503_logged_once_and_recovers(
    postgres_behind_proxy: Served, caplog: pytest.LogCaptureFixture
) -> None:
    url, proxy = postgres_behind_proxy
    with httpx.Client(base_url=url, timeout=30) as http:
        first = http.get("/v1/classes")
        assert first.status_code == 200, first.text
        connection = _client_port(first)

        proxy.cut()
        caplog.clear()
        caplog.set_level(logging.INFO)
        calls: list[tuple[str, str, dict[str, Any]]] = [
            ("GET", "/v1/classes", {}),
            ("GET", "/v1/classes/some-id", {}),
            ("GET", "/v1/classes/some-id/embedding", {}),
            ("DELETE", "/v1/classes/some-id", {}),
            ("POST", "/v1/classes", {"data": {"name": "Tea"}, "files": [("images", GOOD)]}),
            ("GET", "/v1/classes", {}),
        ]
        for method, path, extra in calls:
            response = http.request(method, path, **extra)
            assert response.status_code == 503, (method, path, response.text)
            assert response.headers["content-type"] == "application/json"
            assert "database" in response.json()["detail"]
            assert int(response.headers["retry-after"]) > 0
            assert response.headers.get("connection", "").lower() != "close"
            assert _client_port(response) == connection, "the keep-alive connection was dropped"
        ready = http.get("/readyz")
        assert ready.status_code == 503 and int(ready.headers["retry-after"]) > 0
        problems = _problems(caplog)
        assert len(problems) == 1, problems
        assert problems[0].startswith("database unreachable")
        assert "Traceback" not in caplog.text

        proxy.restore()
        back = http.get("/v1/classes")
        assert back.status_code == 200, back.text
        assert http.post("/v1/classes", data={"name": "Tea"}, files=[("images", GOOD)]).is_success
        assert http.get("/readyz").status_code == 200
        assert any("database reachable again" in m for m in _problems(caplog))


def _ready_class_with_a_word(url: str, runtime: RuntimeHolder) -> str:
    """A ready class "Zorb" of the loaded model, its feature and learned word written directly."""
    import numpy as np
    from sqlalchemy import update

    from service.crud import insert_ready_classes
    from service.db import make_engine, make_session_factory, session_scope
    from service.models import PersonalizedClass

    backend = runtime.get().backend
    rng = np.random.default_rng(0)
    feature = rng.normal(size=(1, int(backend.embed_dim))).astype(np.float32)
    word = rng.normal(size=int(backend.token_dim)).astype(np.float32)
    engine = make_engine(url)
    with session_scope(make_session_factory(engine)) as session:
        insert_ready_classes(
            session=session, model_id=backend.model_id, names=["Zorb"], features=feature
        )
        session.execute(update(PersonalizedClass).values(token_embedding=word.tobytes()))
    engine.dispose()
    return "Zorb"


@pytest.mark.postgres
@pytest.mark.parametrize("during_outage", [True, False])
def test_classify_answers_from_the_class_matrix_while_the_database_is_away(
    postgres_database: str,
    make_settings: Callable[..., Settings],
    shared_runtime: RuntimeHolder,
    caplog: pytest.LogCaptureFixture,
    during_outage: bool,
) -> None:
    from tests.helpers.databases import truncate_postgres

    truncate_postgres(postgres_database)
    target = make_url(postgres_database)
    with tcp_proxy(target.host or "127.0.0.1", target.port or 5432) as proxy:
        through = _through(proxy, postgres_database)
        _ready_class_with_a_word(through, shared_runtime)
        settings = make_settings(through, classify_during_database_outage=during_outage)
        with _serve(settings, shared_runtime) as url, httpx.Client(base_url=url) as http:
            image = {"image": GOOD}
            words = {"texts": ["a photo of a {Zorb}"]}
            first = http.post("/v1/classify", files=image)
            assert first.json()["predictions"][0]["label"] == "Zorb", first.text
            assert http.post("/v1/embeddings", json=words).status_code == 200
            proxy.cut()
            caplog.clear()
            caplog.set_level(logging.INFO)
            answers = [http.post("/v1/classify", files=image) for _ in range(10)]
            embedded = http.post("/v1/embeddings", json=words)
            written = http.post("/v1/classes", data={"name": "Tea"}, files=[("images", GOOD)])
            assert written.status_code == 503, written.text
            if not during_outage:
                assert {a.status_code for a in answers} == {503}
                assert embedded.status_code == 503
                return
            for answer in answers:
                assert answer.status_code == 200, answer.text
                assert answer.headers["x-liteembed-stale"] == "true"
                assert answer.json()["predictions"][0]["label"] == "Zorb"
            assert embedded.status_code == 200, embedded.text
            assert embedded.headers["x-liteembed-stale"] == "true"
            # OpenAI's shape is marked the same way.
            openai = http.post("/v1/embeddings", json={"input": ["a photo of a {Zorb}"]})
            assert openai.status_code == 200, openai.text
            assert openai.headers["x-liteembed-stale"] == "true"
            # A word this process never read cannot be answered from memory.
            unknown = http.post("/v1/embeddings", json={"texts": ["a {Plax}"]})
            assert unknown.status_code == 503
            metrics = http.get("/metrics").text
            assert 'liteembed_stale_answers_total{route="/v1/classify"} 10.0' in metrics
            outage_lines = [m for m in _problems(caplog) if "unreachable" in m]
            assert len(outage_lines) >= 1 and "Traceback" not in caplog.text

            proxy.restore()
            deadline = time.monotonic() + 10
            while "x-liteembed-stale" in http.post("/v1/classify", files=image).headers:
                assert time.monotonic() < deadline, "still stale after the database came back"
                time.sleep(0.2)


@pytest.mark.redis
def test_broker_outage_keeps_registering_and_logs_once(
    redis_behind_proxy: Served, caplog: pytest.LogCaptureFixture
) -> None:
    url, proxy = redis_behind_proxy
    with httpx.Client(base_url=url, timeout=30) as http:
        proxy.cut()
        caplog.clear()
        caplog.set_level(logging.INFO)
        for name in ("Tea", "Coffee", "Cocoa"):
            response = http.post("/v1/classes", data={"name": name}, files=[("images", GOOD)])
            # The row is committed: the reconciler sends it when the broker is back.
            assert response.status_code == 202, response.text
            assert response.json()["status"] == "queued"
        ready = http.get("/readyz")
        assert ready.status_code == 503 and int(ready.headers["retry-after"]) > 0
        problems = _problems(caplog)
        assert len(problems) == 1, problems
        assert problems[0].startswith("broker unreachable")
        assert "Traceback" not in caplog.text

        proxy.restore()
        response = http.post("/v1/classes", data={"name": "Milk"}, files=[("images", GOOD)])
        assert response.status_code == 202, response.text
        assert any("broker reachable again" in m for m in _problems(caplog))
