"""End to end with real processes: `liteembed serve` (uvicorn) + `liteembed worker`, PostgreSQL
and Redis; a worker SIGKILLed mid-training; Redis restarted with jobs queued."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from cli import serve_process
from cli.serve_process import free_port
from tests.helpers.images import COLOURS, class_images, image_bytes

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis]

ADMIN = "e2e-admin-key-0123456789"
AUTH = {"Authorization": f"Bearer {ADMIN}"}


class Processes:
    """`liteembed` commands started with one environment; each logs to tmp_path/NAME.log."""

    def __init__(self, tmp_path: Path, env: dict[str, str]) -> None:
        self.tmp_path = tmp_path
        self.env = env
        self.running: list[serve_process.Child] = []

    def start(self, name: str, *args: str, env: dict[str, str] | None = None) -> Any:
        process = serve_process.Child(
            args, env={**self.env, **(env or {})}, log_path=self.tmp_path / f"{name}.log"
        )
        self.running.append(process)
        return process

    def stop_all(self) -> None:
        serve_process.stop(*self.running, grace_s=15)


def logs(process: Any) -> str:
    return str(process.log_tail())


@pytest.fixture
def stack(
    tmp_path: Path,
    postgres_database: str,
    redis_server_url: str,
    redis_namespace: str,
    cache_dir: Path,
) -> Iterator[Callable[..., Any]]:
    from tests.helpers.databases import truncate_postgres

    truncate_postgres(postgres_database)
    procs: list[Processes] = []

    def make(redis_url: str = redis_server_url, **extra: str) -> Any:
        env = serve_process.environment(
            {
                "LITEEMBED_DATABASE_URL": postgres_database,
                "LITEEMBED_REDIS_URL": redis_url,
                "LITEEMBED_REDIS_NAMESPACE": redis_namespace,
                "LITEEMBED_MODEL": "liteembed-tiny",
                "LITEEMBED_PRETRAINED": "random",
                "LITEEMBED_DEVICE": "cpu",
                "LITEEMBED_CACHE_DIR": str(cache_dir),
                "LITEEMBED_ADMIN_KEYS": ADMIN,
                "LITEEMBED_TRAIN_STEPS": "60",
                "LITEEMBED_HEARTBEAT_SECONDS": "0.5",
                "LITEEMBED_STALE_AFTER_SECONDS": "4",
                "LITEEMBED_QUEUED_RESEND_SECONDS": "4",
                "LITEEMBED_RECONCILE_INTERVAL_SECONDS": "1",
                "LITEEMBED_BROKER_HEARTBEAT_TIMEOUT_MS": "3000",
                "LITEEMBED_BROKER_MAINTENANCE_CHANCE": "1000000",
                "OMP_NUM_THREADS": "1",
                "PYTHONUNBUFFERED": "1",
            }
            | extra
        )
        p = Processes(tmp_path, env)
        procs.append(p)
        return p

    yield make
    for p in procs:
        p.stop_all()


def start_api(procs: Any) -> tuple[Any, str]:
    port = free_port()
    api = procs.start("api", "serve", "--host", "127.0.0.1", "--port", str(port))
    base = f"http://127.0.0.1:{port}"
    serve_process.wait_ready(api, base, timeout=120)
    return api, base


def wait_until(check: Callable[[], Any], timeout: float, process: Any, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        if process is not None and process.poll() is not None:
            raise AssertionError(f"{what}: process exited\n{logs(process)}")
        time.sleep(0.2)
    raise AssertionError(f"{what} (after {timeout}s)\n{logs(process) if process else ''}")


def register(base: str, name: str, colour: str) -> str:
    response = httpx.post(
        f"{base}/v1/classes", data={"name": name}, files=class_images(colour), headers=AUTH
    )
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def status_of(base: str, class_id: str) -> dict[str, Any]:
    return dict(httpx.get(f"{base}/v1/classes/{class_id}", headers=AUTH).json())


def wait_finished(base: str, class_id: str, process: Any, what: str) -> dict[str, Any]:
    """The class's JSON once it is ready or failed (the caller asserts which)."""

    def finished() -> dict[str, Any] | None:
        body = status_of(base, class_id)
        return body if body["status"] in ("ready", "failed") else None

    return dict(wait_until(finished, 180, process, what))


def test_register_train_classify_list_delete(stack: Any) -> None:
    procs = stack()
    api, base = start_api(procs)
    worker = procs.start("worker", "worker")
    # Two clearly distinct classes: the random-weight tiny model separates little more.
    names = {"green": "zorb", "magenta": "plax"}
    ids = {colour: register(base, name, colour) for colour, name in names.items()}
    for class_id in ids.values():
        body = wait_finished(base, class_id, worker, "training never finished")
        assert body["status"] == "ready", body

    # The API process picks the worker's results up from the database within its refresh period.
    def classify(colour: str, seed: int) -> dict[str, Any]:
        held_out = image_bytes(COLOURS[colour], seed=seed)
        return dict(
            httpx.post(
                f"{base}/v1/classify",
                files={"image": ("q.png", held_out, "image/png")},
                headers=AUTH,
            ).json()
        )

    wait_until(lambda: len(classify("green", 1)["predictions"]) == 2, 10, api, "no refresh")
    for colour, class_id in ids.items():
        held_out = image_bytes(COLOURS[colour], seed=500)
        result = httpx.post(
            f"{base}/v1/classify", files={"image": ("q.png", held_out, "image/png")}, headers=AUTH
        ).json()
        assert result["predictions"][0]["class_id"] == class_id, result

    listed = httpx.get(f"{base}/v1/classes", headers=AUTH).json()
    assert listed["total"] == 2
    assert httpx.delete(f"{base}/v1/classes/{ids['green']}", headers=AUTH).status_code == 204
    assert httpx.get(f"{base}/v1/classes/{ids['green']}", headers=AUTH).status_code == 404
    # The deleting process dropped it before answering the DELETE.
    result = classify("green", 501)
    assert [p["class_id"] for p in result["predictions"]] == [ids["magenta"]]
    metrics = httpx.get(f"{base}/metrics", headers=AUTH).text  # class counts: admin only
    assert 'liteembed_classes{status="ready"} 1.0' in metrics
    assert "liteembed_http_requests_total" in metrics


def test_worker_sigkilled_mid_training_comes_back(stack: Any, postgres_database: str) -> None:
    procs = stack()
    api, base = start_api(procs)
    # A long run (no early stop) so the kill lands mid-training.
    first = procs.start(
        "worker-1",
        "worker",
        env={
            "LITEEMBED_TRAIN_STEPS": "3000",
            "LITEEMBED_TRAIN_OPTIONS": '{"early_stopping": false}',
        },
    )
    class_id = register(base, "zorb", "green")
    wait_until(
        lambda: status_of(base, class_id)["progress"] > 0.01, 120, first, "training never started"
    )
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert status_of(base, class_id)["status"] == "training"

    # A fresh worker: the message comes back through Dramatiq's heartbeat redelivery or the
    # reconciler (a stale heartbeat), and the class ends ready, once.
    second = procs.start("worker-2", "worker", env={"LITEEMBED_TRAIN_STEPS": "60"})
    body = wait_finished(base, class_id, second, "the killed job never came back")
    assert body["status"] == "ready", body
    assert body["attempts"] == 2
    from sqlalchemy import create_engine, text

    engine = create_engine(postgres_database)
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT count(*), count(embedding) FROM classes WHERE name_key = 'zorb'")
        ).one()
    engine.dispose()
    assert tuple(rows) == (1, 1)


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[Callable[[], tuple[str, Callable[[], None]]]]:
    """A private redis-server (restarting the shared one would disturb others)."""
    binary = shutil.which("redis-server")
    if binary is None:
        if os.environ.get("LITEEMBED_TEST_REQUIRE_SERVICES") == "1":
            pytest.fail("redis-server is not installed")
        pytest.skip("redis-server is not installed")
    port = free_port()
    servers: list[subprocess.Popen[bytes]] = []

    def start() -> None:
        servers.append(
            subprocess.Popen(
                [
                    binary,
                    "--port",
                    str(port),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    str(tmp_path),
                ],
                stdout=subprocess.DEVNULL,
            )
        )
        import redis

        client = redis.Redis(port=port)
        for _ in range(100):
            try:
                client.ping()
                return
            except redis.ConnectionError:
                time.sleep(0.05)
        raise AssertionError("private redis-server did not start")

    def restart() -> None:
        servers[-1].kill()  # no persistence: everything queued is gone
        servers[-1].wait()
        start()

    start()
    yield lambda: (f"redis://127.0.0.1:{port}/0", restart)
    for server in servers:
        server.kill()
        server.wait()


def test_redis_restart_loses_nothing(stack: Any, own_redis: Any) -> None:
    redis_url, restart_redis = own_redis()
    procs = stack(redis_url=redis_url)
    api, base = start_api(procs)
    # No worker yet: the jobs sit in Redis, and Redis then loses them.
    ids = [register(base, name, colour) for name, colour in (("zorb", "green"), ("quim", "yellow"))]
    restart_redis()
    worker = procs.start("worker", "worker")
    for class_id in ids:
        body = wait_finished(base, class_id, worker, "lost jobs were never re-sent")
        assert body["status"] == "ready", body
        assert body["attempts"] == 1
    assert "re-sent" in logs(worker)
