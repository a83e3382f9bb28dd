"""The Redis broker against a real Redis: a message sent by the API reaches a worker, and a
message held by a worker that died comes back to another one (heartbeat redelivery)."""

from __future__ import annotations

import time
from typing import Any

import pytest

from service.core.config import QUEUE_NAME
from service.queue import make_producer

pytestmark = pytest.mark.redis


def test_send_and_redeliver_after_a_dead_consumer(
    redis_server_url: str, redis_namespace: str, make_settings: Any
) -> None:
    settings = make_settings(
        "sqlite://",
        redis_url=redis_server_url,
        redis_namespace=redis_namespace,
        broker_heartbeat_timeout_ms=500,
        broker_maintenance_chance=1_000_000,
    )
    producer = make_producer(settings)
    producer.send_train("class-1")
    assert producer.depth() == 1

    # Worker A takes the message and dies without acking (no heartbeat from now on).
    dead = make_producer(settings)
    consumer = dead.broker.consume(QUEUE_NAME, prefetch=1, timeout=1000)
    message = next(m for m in consumer if m is not None)
    assert message.args == ("class-1",)
    assert producer.depth() == 0

    # Worker B: once A's heartbeat is older than the timeout, maintenance requeues its message.
    time.sleep(0.8)
    alive = make_producer(settings)
    consumer_b = alive.broker.consume(QUEUE_NAME, prefetch=1, timeout=500)
    deadline = time.monotonic() + 10
    received = None
    while received is None and time.monotonic() < deadline:
        received = next(consumer_b)
    assert received is not None and received.args == ("class-1",)
    consumer_b.ack(received)
    for each in (producer, dead, alive):
        each.close()
