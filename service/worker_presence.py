"""Which queue workers are alive: each standalone worker writes a heartbeat into one Redis hash;
/readyz, /metrics and the worker container's healthcheck read it.

Times are the Redis server's clock (TIME), so workers and API processes on different hosts agree
on ages without synchronised clocks.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
from collections.abc import Iterable
from dataclasses import dataclass

import redis
from prometheus_client.core import GaugeMetricFamily

from service.core.config import Settings

log = logging.getLogger(__name__)

# Heartbeats older than this are deleted when read: workers that are long gone.
FORGET_AFTER_S = 24 * 3600.0


def this_worker_id() -> str:
    """host/pid: in a container the host name is the container's, unique per container."""
    return f"{socket.gethostname()}/{os.getpid()}"


@dataclass(frozen=True)
class Presence:
    """Seconds since each worker's last heartbeat, and the threshold for calling one alive."""

    ages: dict[str, float]
    absent_after_s: float

    @property
    def alive(self) -> int:
        return sum(age <= self.absent_after_s for age in self.ages.values())

    @property
    def last_seen_s(self) -> float | None:
        return min(self.ages.values()) if self.ages else None

    def alive_on(self, host: str) -> bool:
        return any(
            worker.split("/", 1)[0] == host and age <= self.absent_after_s
            for worker, age in self.ages.items()
        )


class WorkerPresence:
    def __init__(self, settings: Settings, client: redis.Redis | None = None) -> None:
        if client is None:
            if settings.redis_url is None:
                raise ValueError("worker heartbeats need LITEEMBED_REDIS_URL")
            client = redis.Redis.from_url(settings.redis_url)
        self._client = client
        self._key = f"{settings.redis_namespace}:worker-heartbeats"
        self._absent_after_s = settings.worker_absent_after_seconds

    def _now(self) -> float:
        seconds, micros = self._client.time()
        return seconds + micros / 1e6

    def beat(self, worker_id: str) -> None:
        self._client.hset(self._key, worker_id, repr(self._now()))

    def forget(self, worker_id: str) -> None:
        self._client.hdel(self._key, worker_id)

    def read(self) -> Presence:
        now = self._now()
        ages: dict[str, float] = {}
        gone: list[str] = []
        for raw_id, raw_time in self._client.hgetall(self._key).items():
            worker = raw_id.decode() if isinstance(raw_id, bytes) else str(raw_id)
            age = max(0.0, now - float(raw_time))
            if age > FORGET_AFTER_S:
                gone.append(worker)
            else:
                ages[worker] = age
        if gone:
            self._client.hdel(self._key, *gone)
        return Presence(ages=ages, absent_after_s=self._absent_after_s)


class WorkerHeartbeat:
    """A daemon thread that beats every `worker_heartbeat_seconds` until stopped; a Redis outage
    is logged and retried, never fatal (the broker reports it on its own)."""

    def __init__(self, settings: Settings, worker_id: str | None = None) -> None:
        self._presence = WorkerPresence(settings)
        self._interval = settings.worker_heartbeat_seconds
        self.worker_id = worker_id or this_worker_id()
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name="liteembed-worker-heartbeat", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        with contextlib.suppress(redis.RedisError):
            self._presence.forget(self.worker_id)

    def _run(self) -> None:
        failing = False
        while True:
            try:
                self._presence.beat(self.worker_id)
                if failing:
                    log.info("worker heartbeat: Redis reachable again")
                failing = False
            except redis.RedisError as exc:
                if not failing:
                    log.warning("worker heartbeat: cannot write to Redis: %s", exc)
                failing = True
            if self._stop.wait(self._interval):
                return


class PresenceCollector:
    """/metrics: workers with a fresh heartbeat, and the age of the newest heartbeat."""

    def __init__(self, presence: WorkerPresence) -> None:
        self._presence = presence

    def collect(self) -> Iterable[GaugeMetricFamily]:
        try:
            seen = self._presence.read()
        except redis.RedisError as exc:
            log.warning("metrics: cannot read worker heartbeats: %s", exc)
            return
        yield GaugeMetricFamily(
            "liteembed_workers_alive",
            "Queue workers whose heartbeat is younger than WORKER_ABSENT_AFTER_SECONDS",
            value=seen.alive,
        )
        if seen.last_seen_s is not None:
            yield GaugeMetricFamily(
                "liteembed_worker_last_seen_seconds",
                "Seconds since the newest worker heartbeat",
                value=seen.last_seen_s,
            )

    def describe(self) -> Iterable[GaugeMetricFamily]:
        return []
