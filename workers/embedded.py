"""The one-process mode: API plus a worker thread on the in-memory broker.

`liteembed serve` without a Redis URL runs this. Same actor, same reconciler, same database code
as the separate worker processes; only the broker differs.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import dramatiq
from fastapi import FastAPI

from service.core.config import QUEUE_NAME, Settings, get_settings
from service.main import create_app
from workers.actors import Trainer, register_train_actor
from workers.reconciler import Reconciler

log = logging.getLogger(__name__)


@contextmanager
def embedded_worker(app: FastAPI) -> Iterator[None]:
    state = app.state
    # The worker shares the API's model: one copy in memory, loaded once.
    trainer = Trainer(state.settings, state.session_factory, state.runtime)
    register_train_actor(state.broker, trainer)
    worker = dramatiq.Worker(
        state.broker, queues={QUEUE_NAME}, worker_threads=1, worker_timeout=100
    )
    worker.start()
    reconciler = Reconciler(state.session_factory, state.broker, state.settings, queue_is_new=True)
    reconciler.start()
    state.checks["worker"] = lambda: all(t.is_alive() for t in worker.workers)
    state.checks["reconciler"] = reconciler.is_alive
    log.info("embedded worker started (no LITEEMBED_REDIS_URL: in-memory queue)")
    try:
        yield
    finally:
        reconciler.stop()
        worker.stop(timeout=10_000)


def create_app_with_worker(settings: Settings | None = None) -> FastAPI:
    """The app `liteembed serve` runs: embedded worker exactly when no Redis is configured."""
    settings = settings or get_settings()
    return create_app(settings, background=embedded_worker if settings.embedded_worker else None)
