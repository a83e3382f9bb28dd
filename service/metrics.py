"""Prometheus metrics: one registry per app, so several apps in one test process don't clash.

Under `liteembed serve` every API process writes its counters to files in one directory
(prometheus_client's multiprocess mode, LITEEMBED_METRICS_DIR): a scrape of any process reports
the totals of all of them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.db import is_unavailable
from service.models import PersonalizedClass, Status

log = logging.getLogger(__name__)

GaugeRead = Callable[[], dict[str, tuple[str, float]]]

# On an answer made from this process's class matrix while the database could not be read (it
# misses whatever changed since the last sync); counted per route.
STALE_HEADER = "X-LiteEmbed-Stale"


class Metrics:
    def __init__(self, multiprocess_dir: Path | None = None) -> None:
        self.registry = CollectorRegistry()
        # Figures about what the tenants stored (class counts by status, summed over every
        # tenant): only for a scrape that shows a metrics or admin key (routes/health.py).
        self.detail_registry = CollectorRegistry()
        self.multiprocess = multiprocess_dir is not None
        # Multiprocess: the values live in the shared files and the registry reads them all;
        # registering this process's own metrics too would report them twice.
        own = None if self.multiprocess else self.registry
        if multiprocess_dir is not None:
            MultiProcessCollector(self.registry, path=str(multiprocess_dir))
        self.requests = Counter(
            "liteembed_http_requests_total",
            "HTTP requests by method, route and status code",
            ["method", "route", "status"],
            registry=own,
        )
        self.latency = Histogram(
            "liteembed_http_request_duration_seconds",
            "HTTP request latency by method and route",
            ["method", "route"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=own,
        )
        self.stale_answers = Counter(
            "liteembed_stale_answers_total",
            f"Answers marked {STALE_HEADER}: made from the class matrix during a database outage",
            ["route"],
            registry=own,
        )
        self.bank_recorded = Counter(
            "liteembed_bank_features_recorded_total",
            "Image features from /v1/classify traffic written to the reference bank",
            registry=own,
        )
        self.bank_dropped = Counter(
            "liteembed_bank_features_dropped_total",
            "Image features from /v1/classify traffic the reference bank let go (its queue full "
            "or the database unavailable)",
            registry=own,
        )
        self._published: list[tuple[GaugeRead, dict[str, Gauge]]] = []

    def add_state_collector(self, session_factory: Any, queue_depth: Callable[[], int]) -> None:
        self.registry.register(_QueueCollector(queue_depth))
        self.detail_registry.register(_ClassCounts(session_factory))

    def add_collector(self, collector: Collector) -> None:
        """Values read at scrape time from a source every process shares (database, Redis)."""
        self.registry.register(collector)

    def add_gauges(self, read: GaugeRead, modes: dict[str, str] | None = None) -> None:
        """This process's values, read as name -> (help, value). One process: read at scrape
        time. Multiprocess: published to the shared files after every request (see `publish`),
        combined across processes by `modes[name]` ("sum", "max", "mostrecent"...; default
        "mostrecent")."""
        if not self.multiprocess:
            self.registry.register(_GaugeCollector(read))
            return
        gauges = {
            name: Gauge(name, text, multiprocess_mode=(modes or {}).get(name, "mostrecent"))
            for name, (text, _) in read().items()
        }
        self._published.append((read, gauges))

    def publish(self) -> None:
        for read, gauges in self._published:
            try:
                values = read()
            except Exception:
                log.exception("metrics: cannot read gauges")
                continue
            for name, (_, value) in values.items():
                if name in gauges:
                    gauges[name].set(value)


class _GaugeCollector(Collector):
    def __init__(self, read: Callable[[], dict[str, tuple[str, float]]]) -> None:
        self._read = read

    def collect(self) -> Iterable[GaugeMetricFamily]:
        try:
            values = self._read()
        except Exception:
            log.exception("metrics: cannot read gauges")
            return
        for name, (text, value) in values.items():
            yield GaugeMetricFamily(name, text, value=value)

    def describe(self) -> Iterable[GaugeMetricFamily]:
        return []


class _ClassCounts(Collector):
    """Classes by status, read at scrape time (the database is the source of truth)."""

    def __init__(self, session_factory: Any) -> None:
        self._factory = session_factory

    def collect(self) -> Iterable[GaugeMetricFamily]:
        jobs = GaugeMetricFamily("liteembed_classes", "Classes by status", labels=["status"])
        try:
            with self._factory() as session:
                counts = dict(
                    session.execute(
                        select(PersonalizedClass.status, func.count()).group_by(
                            PersonalizedClass.status
                        )
                    ).all()
                )
        except Exception as exc:
            # During an outage every scrape fails alike: a line, not a traceback, each time.
            if not is_unavailable(exc):
                log.exception("metrics: cannot count classes")
            else:
                log.warning("metrics: cannot count classes: the database is unreachable")
            return
        for st in Status:
            jobs.add_metric([st.value], counts.get(st.value, 0))
        yield jobs

    def describe(self) -> Iterable[GaugeMetricFamily]:
        return []


class _QueueCollector(Collector):
    """Training messages waiting, read at scrape time."""

    def __init__(self, queue_depth: Callable[[], int]) -> None:
        self._queue_depth = queue_depth

    def collect(self) -> Iterable[GaugeMetricFamily]:
        depth = GaugeMetricFamily("liteembed_queue_depth", "Training messages waiting in the queue")
        try:
            depth.add_metric([], self._queue_depth())
        except Exception:
            log.exception("metrics: cannot read the queue depth")
        yield depth

    def describe(self) -> Iterable[GaugeMetricFamily]:
        return []


_STALE_NAME = STALE_HEADER.lower().encode()


class MetricsMiddleware:
    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status_code = 500
        stale = False

        async def send_wrapper(message: Message) -> None:
            nonlocal status_code, stale
            if message["type"] == "http.response.start":
                status_code = message["status"]
                stale = any(name == _STALE_NAME for name, _ in message.get("headers", ()))
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            # The route template, not the raw path: ids would explode the label cardinality.
            path = getattr(route, "path", "unmatched")
            method = scope.get("method", "")
            self.metrics.requests.labels(method, path, str(status_code)).inc()
            self.metrics.latency.labels(method, path).observe(time.perf_counter() - start)
            if stale:
                self.metrics.stale_answers.labels(path).inc()
            # Before the next scrape of any process reads them.
            self.metrics.publish()
