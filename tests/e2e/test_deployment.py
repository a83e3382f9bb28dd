"""What a deployment sees, with real processes: `serve --workers 2` logs and counts as one
service, `migrate` and `preload` log plainly, a worker's heartbeat feeds its healthcheck."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from cli import serve_process
from cli.serve_process import free_port

pytestmark = pytest.mark.slow


@pytest.fixture
def run(tmp_path: Path, cache_dir: Path) -> Iterator[Callable[..., Any]]:
    """Start `liteembed ARGS...` with the test model; its output goes to tmp_path/NAME.log."""
    started: list[serve_process.Child] = []
    base_env = serve_process.environment(
        {
            "LITEEMBED_DATABASE_URL": f"sqlite:///{tmp_path / 'service.db'}",
            "LITEEMBED_MODEL": "liteembed-tiny",
            "LITEEMBED_PRETRAINED": "random",
            "LITEEMBED_DEVICE": "cpu",
            "LITEEMBED_CACHE_DIR": str(cache_dir),
            "OMP_NUM_THREADS": "1",
            "PYTHONUNBUFFERED": "1",
        }
    )

    def start(name: str, *args: str, **env: str) -> serve_process.Child:
        process = serve_process.Child(args, env=base_env | env, log_path=tmp_path / f"{name}.log")
        started.append(process)
        return process

    yield start
    serve_process.stop(*started, grace_s=30)


def output(process: Any) -> str:
    return Path(process.log_path).read_text(errors="replace")


def wait_until(check: Callable[[], Any], timeout: float, process: Any, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        if process.poll() is not None:
            raise AssertionError(f"{what}: process exited\n{output(process)[-4000:]}")
        time.sleep(0.2)
    raise AssertionError(f"{what} (after {timeout}s)\n{output(process)[-4000:]}")


def test_two_api_processes_log_and_count_as_one(
    run: Callable[..., Any], redis_server_url: str, redis_namespace: str
) -> None:
    # Two API processes need the Redis queue (the embedded worker needs a single process).
    redis_env = {
        "LITEEMBED_REDIS_URL": redis_server_url,
        "LITEEMBED_REDIS_NAMESPACE": redis_namespace,
    }
    migrate = run("migrate", "migrate", **redis_env)
    assert migrate.wait(timeout=300) == 0, output(migrate)
    port = free_port()
    api = run(
        "api",
        "serve",
        "--port",
        str(port),
        "--workers",
        "2",
        LITEEMBED_LOG_FORMAT="json",
        **redis_env,
    )
    base = f"http://127.0.0.1:{port}"
    serve_process.wait_ready(api, base, timeout=300)

    def access_lines() -> list[dict[str, Any]]:
        lines = [json.loads(line) for line in output(api).splitlines() if line.startswith("{")]
        return [entry for entry in lines if entry["logger"] == "uvicorn.access"]

    # New connections until both processes have answered (the kernel picks who accepts).
    sent = 0
    with httpx.Client(base_url=base, timeout=10) as client:
        while sent < 400:
            response = client.get(
                "/healthz", headers={"X-Request-ID": f"probe-{sent}", "Connection": "close"}
            )
            assert response.headers["x-request-id"] == f"probe-{sent}"
            sent += 1
            if sent % 10 == 0:
                time.sleep(0.3)  # access lines reach the file
                served = {e["process"] for e in access_lines() if "/healthz" in e["message"]}
                if len(served) == 2:
                    break
        else:
            pytest.fail("one process answered 400 requests; cannot check the aggregation")

        # Every scrape, whichever process answers it, counts every request of both.
        wanted = (
            f'liteembed_http_requests_total{{method="GET",route="/healthz",status="200"}} {sent}.0'
        )
        for _ in range(6):
            scrape = client.get("/metrics", headers={"Connection": "close"}).text
            assert wanted in scrape, [x for x in scrape.splitlines() if "healthz" in x]

    entries = [json.loads(line) for line in output(api).splitlines() if line.startswith("{")]
    servers = {e["process"] for e in entries if e["message"].startswith("Started server process")}
    assert len(servers) >= 2 and {e["process"] for e in access_lines()} <= servers
    probes = [e for e in access_lines() if e.get("request_id", "").startswith("probe-")]
    assert len({e["request_id"] for e in probes}) == sent
    assert all(e["time"].endswith("+00:00") for e in entries)
    # Nothing but JSON lines, from every process.
    assert all(line.startswith("{") for line in output(api).splitlines() if line.strip())


def test_migrate_and_preload_log_plain_lines_with_progress(
    run: Callable[..., Any], tmp_path: Path
) -> None:
    migrate = run("migrate", "migrate")
    assert migrate.wait(timeout=300) == 0, output(migrate)
    lines = output(migrate).splitlines()
    assert any("Running upgrade" in line for line in lines)
    assert any("database schema is up to date" in line for line in lines)
    # alembic's per-start noise is gone; every line is ours, time-stamped.
    assert not [line for line in lines if "setup plugin" in line or "Context impl" in line]
    assert all(line[:4].isdigit() and line[4] == "-" for line in lines), lines

    cache = tmp_path / "fresh-cache"
    preload = run("preload", "preload", LITEEMBED_CACHE_DIR=str(cache))
    assert preload.wait(timeout=600) == 0, output(preload)
    progress = [line for line in output(preload).splitlines() if "words encoded" in line]
    assert progress, output(preload)
    done, total = progress[-1].split("vocabulary cache: ")[1].split()[0].split("/")
    assert done == total
    assert list(cache.glob("*.pt")), "no vocabulary cache written"

    again = run("preload-again", "preload", LITEEMBED_CACHE_DIR=str(cache))
    assert again.wait(timeout=600) == 0, output(again)
    assert "words encoded" not in output(again)  # the cache is warm
    assert "preload done" in output(again)


def test_worker_heartbeat_drives_its_healthcheck(
    run: Callable[..., Any], redis_server_url: str, redis_namespace: str
) -> None:
    env = {
        "LITEEMBED_REDIS_URL": redis_server_url,
        "LITEEMBED_REDIS_NAMESPACE": redis_namespace,
        "LITEEMBED_WORKER_HEARTBEAT_SECONDS": "0.5",
        "LITEEMBED_WORKER_ABSENT_AFTER_SECONDS": "3",
    }
    migrate = run("migrate", "migrate", **env)
    assert migrate.wait(timeout=300) == 0, output(migrate)

    def healthcheck() -> int:
        check = run("healthcheck", "healthcheck", "--worker", **env)
        return check.wait(timeout=120)

    assert healthcheck() == 1  # no worker yet
    worker = run("worker", "worker", **env)
    wait_until(lambda: "worker ready" in output(worker), 300, worker, "the worker never started")
    assert wait_until(lambda: healthcheck() == 0, 60, worker, "no healthy heartbeat")

    worker.send_signal(signal.SIGKILL)  # no clean stop: the heartbeat just ages
    worker.wait(timeout=30)
    deadline = time.monotonic() + 60
    while healthcheck() != 1:
        assert time.monotonic() < deadline, "a dead worker still counts as healthy"
