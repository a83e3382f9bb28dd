"""The queue producer: which broker, and how a training job is sent.

Messages carry only the class id; the row in the database holds everything else. The API sends
after its transaction has committed, so a worker never sees an id it cannot read.
"""

from __future__ import annotations

import logging

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

log = logging.getLogger(__name__)


def make_broker(settings: Settings) -> dramatiq.Broker:
    """RedisBroker when a Redis URL is configured, else the in-memory StubBroker.

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
    return broker


def send_train(broker: dramatiq.Broker, class_id: str) -> None:
    # Built as a bare message so the API never imports the worker's actor (imports flow
    # workers -> service, never back).
    message = dramatiq.Message(
        queue_name=QUEUE_NAME,
        actor_name=TRAIN_ACTOR_NAME,
        args=(class_id,),
        kwargs={},
        options={},
    )
    broker.enqueue(message)


def try_send_train(broker: dramatiq.Broker, class_id: str) -> bool:
    """Send, but a broker outage must not fail a request whose row is already committed: the
    reconciler re-sends rows that stay queued."""
    try:
        send_train(broker, class_id)
        return True
    except Exception:
        log.exception("could not enqueue class %s; the reconciler will re-send it", class_id)
        return False


def queue_depth(broker: dramatiq.Broker) -> int:
    if isinstance(broker, RedisBroker):
        return int(broker.client.llen(f"{broker.namespace}:{QUEUE_NAME}"))
    if isinstance(broker, StubBroker):
        return broker.queues[QUEUE_NAME].qsize()
    return 0


def ping(broker: dramatiq.Broker) -> None:
    if isinstance(broker, RedisBroker):
        broker.client.ping()
