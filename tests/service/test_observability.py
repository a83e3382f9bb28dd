"""Request ids, log formats, loading progress on /readyz, worker heartbeats and the quiet
checkpoint load, in one process (the multi-process behaviour is in tests/e2e)."""

from __future__ import annotations

import io
import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from service.core.config import Settings
from service.core.log_config import logging_config, request_id


def test_request_id_is_echoed_generated_or_replaced(client: Any) -> None:
    given = client.get("/healthz", headers={"X-Request-ID": "trace-42.a:b"})
    assert given.headers["x-request-id"] == "trace-42.a:b"

    first = client.get("/healthz").headers["x-request-id"]
    second = client.get("/healthz").headers["x-request-id"]
    assert len(first) == 32 and int(first, 16) >= 0 and first != second

    # Not a sane token (spaces, or too long for a log line): replaced, never echoed.
    for bad in ("two words", "x" * 129):
        echoed = client.get("/healthz", headers={"X-Request-ID": bad}).headers["x-request-id"]
        assert echoed != bad and len(echoed) == 32

    # Errors carry it too.
    missing = client.get("/v1/classes/nope", headers={"X-Request-ID": "lost-1"})
    assert missing.status_code == 404 and missing.headers["x-request-id"] == "lost-1"


def _format_one(log_format: str, message: str, rid: str | None) -> str:
    """One record through the configured handler's formatter and filter (no global setup)."""
    from service.core.log_config import JsonFormatter, RequestIdFilter

    config = logging_config("INFO", log_format)
    formatter = (
        JsonFormatter()
        if log_format == "json"
        else logging.Formatter(config["formatters"]["default"]["format"])
    )
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    handler.addFilter(RequestIdFilter())
    logger = logging.getLogger(f"service.test.{log_format}")
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.INFO)
    token = request_id.set(rid)
    try:
        logger.info(message)
    finally:
        request_id.reset(token)
        logger.removeHandler(handler)
    return stream.getvalue()


def test_log_lines_carry_time_process_and_request_id() -> None:
    line = json.loads(_format_one("json", "hello", "req-7"))
    assert line["message"] == "hello" and line["level"] == "INFO"
    assert line["logger"] == "service.test.json" and line["request_id"] == "req-7"
    assert line["time"].endswith("+00:00") and isinstance(line["process"], int)
    assert "request_id" not in json.loads(_format_one("json", "outside", None))

    text = _format_one("text", "hello", "req-8")
    assert "INFO" in text and "service.test.text [req-8]: hello" in text
    assert text[:4].isdigit() and text[4] == "-"  # starts with the date


def test_readyz_shows_the_vocabulary_cache_being_built(
    sqlite_url: str, make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    from fastapi.testclient import TestClient

    import service.runtime
    from workers import create_app_with_worker

    real_load = service.runtime.load_runtime
    halfway = threading.Event()
    release = threading.Event()

    def slow_load(settings: Settings, progress: Any = None) -> Any:
        progress.enter("model")
        progress.words(256, 1000)
        halfway.set()
        release.wait(30)
        return real_load(settings, progress)

    monkeypatch.setattr(service.runtime, "load_runtime", slow_load)
    app = create_app_with_worker(make_settings(sqlite_url))
    with TestClient(app) as client:
        assert halfway.wait(30)
        loading = client.get("/readyz")
        assert loading.status_code == 503
        body = loading.json()
        assert body["checks"]["loading"] == {
            "stage": "vocabulary cache",
            "done": 256,
            "total": 1000,
        }
        assert "model loading: vocabulary cache 256/1000 words" in body["detail"]
        release.set()
        deadline = time.monotonic() + 60
        while client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, client.get("/readyz").json()
            time.sleep(0.1)
        assert "loading" not in client.get("/readyz").json()["checks"]


def test_loading_a_checkpoint_does_not_warn_of_random_weights(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from liteembed.backend import load_backend

    warning = "No pretrained weights loaded"
    with caplog.at_level(logging.WARNING):
        load_backend("liteembed-mini", "default", device="cpu")
    assert not [r for r in caplog.records if warning in r.getMessage()]
    # Random weights are random: that warning stays.
    with caplog.at_level(logging.WARNING):
        load_backend("liteembed-tiny", "random", device="cpu")
    assert [r for r in caplog.records if warning in r.getMessage()]


@pytest.mark.redis
def test_worker_heartbeats_show_on_readyz_metrics_and_healthcheck(
    sqlite_url: str,
    make_settings: Callable[..., Settings],
    make_client: Callable[..., Any],
    redis_server_url: str,
    redis_namespace: str,
) -> None:
    from cli.main import healthcheck_command
    from service.worker_presence import WorkerHeartbeat, WorkerPresence

    settings = make_settings(
        sqlite_url,
        redis_url=redis_server_url,
        redis_namespace=redis_namespace,
        worker_heartbeat_seconds=0.2,
        worker_absent_after_seconds=1.0,
    )
    client = make_client(settings)
    presence = WorkerPresence(settings)

    ready = client.get("/readyz").json()
    assert ready["status"] == "ready" and ready["checks"]["workers"] == 0
    assert "no queue worker seen" in ready["warnings"][0] and "never" in ready["warnings"][0]
    assert healthcheck_command(settings, worker=True, port=0) == 1
    assert "liteembed_workers_alive 0.0" in client.get("/metrics").text

    heartbeat = WorkerHeartbeat(settings)
    heartbeat.start()
    try:
        deadline = time.monotonic() + 10
        while presence.read().alive != 1:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        ready = client.get("/readyz").json()
        assert ready["checks"]["workers"] == 1 and "warnings" not in ready
        metrics = client.get("/metrics").text
        assert "liteembed_workers_alive 1.0" in metrics
        assert "liteembed_worker_last_seen_seconds" in metrics
        assert healthcheck_command(settings, worker=True, port=0) == 0
    finally:
        heartbeat.stop()  # a clean stop removes the worker's entry

    assert presence.read().ages == {}
    # A worker that dies without a clean stop: its last beat ages past the threshold.
    presence.beat("elsewhere/1")
    deadline = time.monotonic() + 10
    while presence.read().alive:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    ready = client.get("/readyz").json()
    assert ready["checks"]["workers"] == 0 and "s ago" in ready["warnings"][0]
    assert healthcheck_command(settings, worker=True, port=0) == 1
