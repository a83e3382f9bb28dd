"""The consumer side of the queue: jobs declared on the broker, and the thread that takes them.

With `service/queue.py` (the producer) this is one of the two modules that know the queue
library; changing the backend changes these two.
"""

from __future__ import annotations

from typing import Any

import dramatiq

from service.core.config import QUEUE_NAME, TRAIN_ACTOR_NAME, Settings
from service.queue import Producer
from workers.training import Trainer


def declare_jobs(producer: Producer, trainer: Trainer) -> None:
    """Declare `train_class` on the producer's broker, bound to this process's trainer."""
    settings: Settings = trainer.settings

    def train_class(class_id: str) -> None:
        # Classes handed back by a stopping worker are queued again in the database; sending
        # their ids again gets them to another worker now, not at the reconciler's next resend.
        for handed_back in trainer.train_class(class_id):
            producer.try_send_train(handed_back)

    dramatiq.Actor(
        train_class,
        broker=producer.broker,
        actor_name=TRAIN_ACTOR_NAME,
        queue_name=QUEUE_NAME,
        priority=0,
        options={
            # Dramatiq's 10-minute default would kill long CPU runs; its 20 retries would loop
            # on a job that keeps crashing (the DB attempts counter caps it too).
            "time_limit": settings.job_time_limit_seconds * 1000,
            "max_retries": settings.job_max_retries,
        },
    )


class Consumer:
    """One worker thread taking jobs from the queue, one at a time."""

    def __init__(self, producer: Producer, *, poll_ms: int, prefetch: int | None) -> None:
        self._worker = dramatiq.Worker(
            producer.broker, queues={QUEUE_NAME}, worker_threads=1, worker_timeout=poll_ms
        )
        if prefetch is not None:
            self._worker.queue_prefetch = prefetch

    def start(self) -> None:
        self._worker.start()

    def stop(self, timeout_s: float) -> None:
        """Stop taking jobs, and wait up to `timeout_s` for the running one to finish."""
        self._worker.stop(timeout=int(timeout_s * 1000))

    def is_alive(self) -> bool:
        workers: Any = self._worker.workers
        return all(t.is_alive() for t in workers)
