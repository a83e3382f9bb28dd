"""Processes stop when told: SIGTERM ends an idle `liteembed worker` within seconds, a worker (or
`liteembed serve` with its embedded worker) stopped mid-training hands its class back to the
queue, and another worker trains it."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from tests.e2e import test_processes as processes

pytestmark = [pytest.mark.slow]

# A behavioural bound, far below compose's grace period: a process that waits for its job (or
# for nothing) instead of stopping blows through it.
STOP_BOUND_S = 10

# Long enough that the SIGTERM lands mid-training, and no early stop.
LONG_RUN = {
    "LITEEMBED_TRAIN_STEPS": "100000",
    "LITEEMBED_TRAIN_OPTIONS": '{"early_stopping": false}',
}

stack = processes.stack


def stop(process: Any) -> int:
    """SIGTERM, then the exit status; fails if the process outlives the bound."""
    process.send_signal(signal.SIGTERM)
    try:
        return int(process.wait(timeout=STOP_BOUND_S))
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise AssertionError(
            f"still running {STOP_BOUND_S} s after SIGTERM\n{processes.logs(process)}"
        ) from None


def row_of(database_url: str, class_id: str) -> tuple[str, int]:
    engine = create_engine(database_url)
    with engine.connect() as conn:
        row = conn.execute(
            text("SELECT status, attempts FROM classes WHERE id = :id"), {"id": class_id}
        ).one()
    engine.dispose()
    return str(row[0]), int(row[1])


@pytest.mark.postgres
@pytest.mark.redis
def test_idle_worker_exits_on_sigterm(stack: Any) -> None:
    procs = stack()
    api, base = processes.start_api(procs)
    worker = procs.start("worker", "worker")
    # Idle after a job, as a worker is when a deployment stops it.
    class_id = processes.register(base, "zorb", "green")
    body = processes.wait_finished(base, class_id, worker, "training never finished")
    assert body["status"] == "ready", body
    assert stop(worker) == 0, processes.logs(worker)


@pytest.mark.postgres
@pytest.mark.redis
def test_worker_stopped_mid_training_hands_the_class_back(
    stack: Any, postgres_database: str
) -> None:
    # Neither the reconciler nor Dramatiq's redelivery of a dead worker's message acts within
    # this test: only a class the stopping worker handed back reaches the second worker.
    procs = stack(
        LITEEMBED_QUEUED_RESEND_SECONDS="3600",
        LITEEMBED_STALE_AFTER_SECONDS="3600",
        LITEEMBED_BROKER_HEARTBEAT_TIMEOUT_MS="3600000",
    )
    api, base = processes.start_api(procs)
    first = procs.start("worker-1", "worker", env=LONG_RUN)
    class_id = processes.register(base, "zorb", "green")
    processes.wait_until(
        lambda: processes.status_of(base, class_id)["progress"] > 0.01,
        120,
        first,
        "training never started",
    )
    assert stop(first) == 0, processes.logs(first)
    assert row_of(postgres_database, class_id)[0] == "queued", processes.logs(first)

    second = procs.start("worker-2", "worker")
    body = processes.wait_finished(base, class_id, second, "the handed-back class never came back")
    assert body["status"] == "ready", body


@pytest.mark.postgres
@pytest.mark.redis
def test_serve_stopped_mid_training_hands_the_class_back(stack: Any, tmp_path: Path) -> None:
    """The API's embedded worker (no Redis, SQLite) stops with the API, and the next start of
    the API trains the class."""
    database_url = f"sqlite:///{tmp_path / 'embedded.db'}"
    procs = stack(redis_url="", LITEEMBED_DATABASE_URL=database_url, **LONG_RUN)
    api, base = processes.start_api(procs)
    class_id = processes.register(base, "zorb", "green")
    processes.wait_until(
        lambda: processes.status_of(base, class_id)["progress"] > 0.01,
        120,
        api,
        "training never started",
    )
    # uvicorn shuts down, then re-raises the SIGTERM it caught.
    assert stop(api) in (0, -signal.SIGTERM), processes.logs(api)
    assert row_of(database_url, class_id)[0] == "queued", processes.logs(api)

    procs = stack(redis_url="", LITEEMBED_DATABASE_URL=database_url)
    api, base = processes.start_api(procs)
    body = processes.wait_finished(base, class_id, api, "the class was not trained after a restart")
    assert body["status"] == "ready", body
