"""The queue producer: the broker connection, and how a job is sent.

With `workers/_broker.py` (the consumer side) this is one of the two modules that know the queue
library; changing the backend changes these two. Jobs are sent by actor name, so nothing here
imports a worker (imports flow workers -> service, never back).

Messages carry only the class id; the row in the database holds everything else. The API sends
after its transaction has committed, so a worker never sees an id it cannot read.
"""

from __future__ import annotations

import logging
from typing import Any

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import (
    AgeLimit,
    Callbacks,
    Pipelines,
    Retries,
    ShutdownNotifications,
    TimeLimit,
)

from service.core.config import QUEUE_NAME, TRAIN_ACTOR_NAME, Settings
from service.outage import OutageLog

log = logging.getLogger(__name__)


class Producer:
    """Sends jobs to the queue and looks at it; shared by the API and the reconciler.

    `broker` is the Dramatiq broker itself, for `workers/_broker.py` to consume from (the
    embedded worker must use the very same in-memory broker).
    """

    def __init__(self, broker: dramatiq.Broker) -> None:
        self.broker = broker
        self.outage = OutageLog(
            "broker", log, meanwhile="registrations stay queued until the reconciler re-sends them"
        )

    def send(self, actor_name: str, *args: Any) -> None:
        # Built as a bare message so the sender never needs the actor object.
        message = dramatiq.Message(
            queue_name=QUEUE_NAME,
            actor_name=actor_name,
            args=args,
            kwargs={},
            options={},
        )
        self.broker.enqueue(message)

    def send_train(self, class_id: str) -> None:
        self.send(TRAIN_ACTOR_NAME, class_id)

    def try_send_train(self, class_id: str) -> bool:
        """Send, but a broker outage must not fail a request whose row is already committed:
        the reconciler re-sends rows that stay queued."""
        try:
            self.send_train(class_id)
        except Exception as exc:
            # One line per outage, not a traceback per registration.
            self.outage.failed(exc)
            return False
        self.outage.succeeded()
        return True

    def depth(self) -> int:
        """Messages waiting in the queue (not counting those a worker holds)."""
        broker = self.broker
        if isinstance(broker, RedisBroker):
            return int(broker.client.llen(f"{broker.namespace}:{QUEUE_NAME}"))
        if isinstance(broker, StubBroker):
            return broker.queues[QUEUE_NAME].qsize()
        return 0

    def ping(self) -> None:
        """Raise if the broker cannot be reached (the in-memory one always can)."""
        if isinstance(self.broker, RedisBroker):
            self.broker.client.ping()

    def close(self) -> None:
        self.broker.close()


def make_producer(settings: Settings) -> Producer:
    """Redis when a Redis URL is configured, else the in-memory queue (embedded worker only).

    The middleware list is spelled out (Dramatiq's defaults minus Prometheus, which would open
    its own port): the service exports its own /metrics.
    """
    middleware = [
        AgeLimit(),
        TimeLimit(time_limit=settings.job_time_limit_seconds * 1000),
        ShutdownNotifications(),
        Callbacks(),
        Pipelines(),
        Retries(max_retries=settings.job_max_retries, min_backoff=1000, max_backoff=60_000),
    ]
    broker: dramatiq.Broker
    if settings.redis_url:
        broker = RedisBroker(
            url=settings.redis_url,
            namespace=settings.redis_namespace,
            middleware=middleware,
            # Lower than the defaults in tests so a killed worker's message comes back in seconds.
            heartbeat_timeout=settings.broker_heartbeat_timeout_ms,
            maintenance_chance=settings.broker_maintenance_chance,
        )
    else:
        broker = StubBroker(middleware=middleware)
    broker.declare_queue(QUEUE_NAME)
    return Producer(broker)
