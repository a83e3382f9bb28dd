"""Starting a worker: one way, for the thread inside `liteembed serve` (in-memory queue) and the
standalone `liteembed worker` process (Redis) alike."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from fastapi import FastAPI
from sqlalchemy.orm import Session, sessionmaker

from service.core.config import QUEUE_NAME, Settings, get_settings
from service.db import make_engine, make_session_factory
from service.main import create_app
from service.queue import Producer, make_producer
from service.runtime import RuntimeHolder
from service.worker_presence import WorkerHeartbeat
from workers._broker import Consumer, declare_jobs
from workers.reconciler import Reconciler
from workers.training import Trainer

log = logging.getLogger(__name__)

# How long a stopping worker waits for its job to hand its classes back (the optimisation stops
# at its next step, so this is seconds). A job stuck elsewhere (a hung database call) is left
# behind: its row's heartbeat goes stale and the reconciler re-sends it. The standalone bound
# stays well inside compose's stop_grace_period (60 s), so a stop is never a SIGKILL.
EMBEDDED_STOP_TIMEOUT_S = 10.0
STANDALONE_STOP_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class RunningWorker:
    consumer: Consumer
    reconciler: Reconciler


@contextmanager
def running_worker(
    *,
    settings: Settings,
    sessions: sessionmaker[Session],
    runtime: RuntimeHolder,
    producer: Producer,
    embedded: bool,
) -> Iterator[RunningWorker]:
    """Take `train_class` jobs from the queue and run the reconciler until the block ends.

    Embedded, it shares the API's model, sessions and in-memory queue, which starts empty (so
    the reconciler's first pass re-sends every queued row). Standalone, it holds one message at
    a time (a prefetched one would wait behind the running job, unavailable to idle workers on
    other GPUs). Either way, when the block ends the running job stops at its next optimisation
    step and hands its classes back to the queue for another worker (or the next start).
    """
    trainer = Trainer(settings, sessions, runtime)
    declare_jobs(producer, trainer)
    consumer = Consumer(
        producer, poll_ms=100 if embedded else 1000, prefetch=None if embedded else 1
    )
    consumer.start()
    reconciler = Reconciler(sessions, producer, settings, queue_is_new=embedded)
    reconciler.start()
    try:
        yield RunningWorker(consumer=consumer, reconciler=reconciler)
    finally:
        trainer.stop_soon()
        reconciler.stop()
        consumer.stop(timeout_s=EMBEDDED_STOP_TIMEOUT_S if embedded else STANDALONE_STOP_TIMEOUT_S)


@contextmanager
def embedded_worker(app: FastAPI) -> Iterator[None]:
    """The app's background worker thread, on the app's own resources."""
    state = app.state
    with running_worker(
        settings=state.settings,
        sessions=state.session_factory,
        # The worker shares the API's model: one copy in memory, loaded once.
        runtime=state.runtime,
        producer=state.producer,
        embedded=True,
    ) as worker:
        state.checks["worker"] = worker.consumer.is_alive
        state.checks["reconciler"] = worker.reconciler.is_alive
        log.info("embedded worker started (no LITEEMBED_REDIS_URL: in-memory queue)")
        yield


def create_app_with_worker(settings: Settings | None = None) -> FastAPI:
    """The app `liteembed serve` runs: embedded worker exactly when no Redis is configured."""
    settings = settings or get_settings()
    return create_app(settings, background=embedded_worker if settings.embedded_worker else None)


def run_worker_process(settings: Settings) -> int:
    """`liteembed worker`: one process, one thread, one copy of the model per GPU, loaded in
    this process after start (never inherited through a fork). Stops within seconds on SIGINT
    or SIGTERM, handing a running job's classes back to the queue; a second signal ends it at
    once."""
    if settings.redis_url is None:
        log.error("liteembed worker needs LITEEMBED_REDIS_URL (without it, serve runs the worker)")
        return 2
    sessions = make_session_factory(make_engine(settings.database_url))
    producer = make_producer(settings)
    runtime = RuntimeHolder(settings)
    # Load before consuming: a broken model configuration fails the process loudly at start.
    try:
        loaded = runtime.get()
    except Exception:
        log.error("worker: the model could not be loaded: %s", runtime.error)
        return 1

    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        stop.set()
        # The next one gets the default action: a second Ctrl-C does not wait for the stop.
        signal.signal(signum, signal.SIG_DFL)

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    heartbeat = WorkerHeartbeat(settings)
    with running_worker(
        settings=settings, sessions=sessions, runtime=runtime, producer=producer, embedded=False
    ):
        heartbeat.start()
        log.info("worker ready: model %s, queue %s", loaded.model_id, QUEUE_NAME)
        stop.wait()
        log.info("worker stopping (a running job goes back to the queue)")
        heartbeat.stop()
    producer.close()
    return 0
