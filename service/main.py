"""The FastAPI application factory."""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, asynccontextmanager, contextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi_offline import FastAPIOffline

from service.admin import mount_admin
from service.api import errors, fast_lane, openapi
from service.api.limits import BodySizeLimit
from service.api.rate_limit import RateLimiter, RateLimitHeaders
from service.api.request_id import RequestIdMiddleware
from service.api.routes import (
    bank,
    classes,
    classify,
    embeddings,
    health,
    keys,
    models,
    portability,
    vocabulary,
)
from service.bank.recorder import BankRecorder
from service.core.config import Settings, get_settings
from service.db import SchemaCheck, make_engine, make_session_factory, watch_outages
from service.keys import KeyLookup, hash_secret
from service.metrics import Metrics, MetricsMiddleware
from service.queue import make_producer
from service.runtime import RuntimeHolder
from service.scoring.batcher import ModelRunner, preprocess_pool
from service.scoring.labels import TextFeatureCache
from service.scoring.learned_words import LearnedWords
from service.scoring.scorer import scorer_for
from service.scoring.sync import ClassMatrixCache
from service.thumbnails import ThumbnailCache
from service.webhooks.dispatcher import WebhookDispatcher
from service.worker_presence import PresenceCollector, WorkerPresence

log = logging.getLogger(__name__)

# Answer headers a browser app on another origin may read.
CORS_EXPOSED_HEADERS = [
    "Location",
    "Retry-After",
    "RateLimit-Limit",
    "RateLimit-Remaining",
    "RateLimit-Reset",
    "X-Request-ID",
    "X-LiteEmbed-Stale",
]

# Something run for the lifetime of the app (the embedded worker); it gets the app to find
# the queue producer, sessions and model in app.state.
Background = Callable[[FastAPI], AbstractContextManager[None]]


def create_app(
    settings: Settings | None = None, *, background: Background | None = None
) -> FastAPI:
    settings = settings or get_settings()
    engine = make_engine(settings.database_url)
    session_factory = make_session_factory(engine)
    metrics = Metrics(settings.metrics_dir)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        with ExitStack() as stack:
            stack.enter_context(_warm_up(app))
            stack.enter_context(_webhook_deliveries(app))
            stack.enter_context(_bank_recording(app))
            if background is not None:
                stack.enter_context(background(app))
            yield
        engine.dispose()

    # /docs and /redoc load their scripts from the installed package, not a CDN, so they render
    # on air-gapped machines.
    app = FastAPIOffline(
        title="LiteEmbed",
        version="1.0",
        summary="Teach CLIP a new class from a few images, then classify with it.",
        generate_unique_id_function=openapi.operation_id,
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.engine = engine
    app.state.database_outage = watch_outages(engine)
    app.state.session_factory = session_factory
    app.state.schema_check = SchemaCheck()
    app.state.key_lookup = KeyLookup(
        session_factory,
        ttl=settings.key_cache_seconds,
        hash_secret=hash_secret(settings),
    )
    app.state.producer = make_producer(settings)
    app.state.runtime = RuntimeHolder(settings)
    app.state.classifier = ClassMatrixCache(
        session_factory, settings.classifier_refresh_seconds, settings.classifier_dtype
    )
    app.state.model_runner = _model_runner(app, settings)
    app.state.preprocess_pool = None
    app.state.text_features = TextFeatureCache()
    app.state.thumbnails = ThumbnailCache(settings.thumbnail_cache_bytes)
    app.state.learned_words = LearnedWords()
    app.state.metrics = metrics
    # Only when some tenant is opted in: otherwise /classify skips recording altogether.
    app.state.bank_recorder = (
        BankRecorder(
            session_factory,
            settings,
            recorded=metrics.bank_recorded.inc,
            dropped=metrics.bank_dropped.inc,
        )
        if settings.bank_from_traffic_tenants
        else None
    )
    app.state.rate_limiter = (
        RateLimiter(
            settings.rate_limit,
            redis_url=settings.redis_url,
            namespace=settings.redis_namespace,
        )
        if settings.rate_limit
        else None
    )
    app.state.checks = {}
    app.state.background_checks = lambda: {k: bool(f()) for k, f in app.state.checks.items()}
    metrics.add_state_collector(session_factory, lambda: app.state.producer.depth())
    metrics.add_gauges(lambda: _runner_gauges(app), modes=_RUNNER_GAUGE_MODES)
    # Standalone workers (Redis mode) report their heartbeats; the embedded one lives in this
    # process and is covered by the background checks.
    app.state.worker_presence = WorkerPresence(settings) if settings.redis_url else None
    if app.state.worker_presence is not None:
        metrics.add_collector(PresenceCollector(app.state.worker_presence))

    # The hot routes first: a request is matched against the routes in this order, and each
    # miss costs a regular-expression match (tens of microseconds over every route).
    app.include_router(classify.router)
    app.include_router(embeddings.router)
    app.include_router(health.router)
    app.include_router(classes.router)
    app.include_router(portability.router)
    app.include_router(keys.router)
    app.include_router(bank.router)
    app.include_router(models.router)
    app.include_router(vocabulary.router)
    # Before every route: the raw-body /classify and JSON /embeddings requests.
    fast_lane.install(app)
    mount_admin(app)
    errors.install(app)
    openapi.install(app)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_request_bytes)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    app.add_middleware(errors.ServerErrorsAsJson)
    app.add_middleware(RateLimitHeaders)
    if settings.cors_origins:
        # Outside the routes and the rate limit: a preflight is answered here, and the answers
        # a browser app must read (errors included) carry the CORS headers.
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "X-Request-ID"],
            expose_headers=CORS_EXPOSED_HEADERS,
            max_age=600,
        )
    # Outermost: every log line of the request, the access line included, carries its id.
    app.add_middleware(RequestIdMiddleware)
    return app


@contextmanager
def _warm_up(app: FastAPI) -> Iterator[None]:
    """Load the model off the startup path (so /healthz answers at once), then start the
    class-matrix refresher."""
    holder: RuntimeHolder = app.state.runtime
    classifier: ClassMatrixCache = app.state.classifier

    def run() -> None:
        try:
            runtime = holder.get()
            classifier.bind_model(runtime.model_id, int(runtime.backend.embed_dim))
            classifier.refresh_now()
            classifier.start()
        except Exception:
            log.error("the model could not be loaded; /readyz stays 503: %s", holder.error)

    thread = threading.Thread(target=run, name="liteembed-warm-up", daemon=True)
    thread.start()
    runner: ModelRunner = app.state.model_runner
    runner.start()
    settings: Settings = app.state.settings
    app.state.preprocess_pool = preprocess_pool(settings.classify_preprocess_threads)
    try:
        yield
    finally:
        classifier.stop()
        runner.stop()
        app.state.preprocess_pool.shutdown(wait=False, cancel_futures=True)


@contextmanager
def _webhook_deliveries(app: FastAPI) -> Iterator[None]:
    """Send the outbox's webhooks from this process (each API process does; see
    service/webhooks/dispatcher.py for why here)."""
    settings: Settings = app.state.settings
    if not settings.webhooks_enabled:
        yield
        return
    dispatcher = WebhookDispatcher(app.state.session_factory, settings)
    dispatcher.start()
    app.state.checks["webhooks"] = dispatcher.is_alive
    try:
        yield
    finally:
        dispatcher.stop()


@contextmanager
def _bank_recording(app: FastAPI) -> Iterator[None]:
    """Write the features /classify hands the bank recorder, from this process's own thread."""
    recorder: BankRecorder | None = app.state.bank_recorder
    if recorder is None:
        yield
        return
    recorder.start()
    try:
        yield
    finally:
        recorder.stop()


# How each process's value combines across API processes (multiprocess metrics); the class
# matrix gauges take the most recent value.
_RUNNER_GAUGE_MODES = {
    "liteembed_classify_batches": "sum",
    "liteembed_classify_batched_images": "sum",
    "liteembed_classify_largest_batch": "max",
}


def _runner_gauges(app: FastAPI) -> dict[str, tuple[str, float]]:
    stats = app.state.model_runner.stats
    snapshot = app.state.classifier.current
    return {
        "liteembed_classify_batches": ("Image batches encoded for /classify", stats.batches),
        "liteembed_classify_batched_images": ("Images in those batches", stats.images),
        "liteembed_classify_largest_batch": ("Largest batch so far", stats.largest_batch),
        "liteembed_class_matrix_classes": (
            "Classes in the in-memory class matrix",
            snapshot.size if snapshot is not None else 0,
        ),
        "liteembed_class_matrix_bytes": (
            "Memory held by the class matrix snapshot",
            snapshot.nbytes if snapshot is not None else 0,
        ),
    }


def _model_runner(app: FastAPI, settings: Settings) -> ModelRunner:
    """The one thread that runs the image encoder for /classify.

    It looks the runtime up on every batch (through app.state, which tests may swap) rather than
    holding a backend: the model loads after the app starts.
    """

    def runtime() -> Any:
        return app.state.runtime.get()

    def snapshot() -> Any:
        backend = runtime().backend
        return app.state.classifier.snapshot(backend.model_id, int(backend.embed_dim))

    return ModelRunner(
        lambda pixels: runtime().backend.encode_image_batch(pixels),
        snapshot=snapshot,
        logit_scale=lambda: float(runtime().backend.logit_scale),
        scorer=lambda: scorer_for(runtime().backend.device),
        max_batch=settings.classify_max_batch,
        max_wait_s=settings.classify_max_wait_ms / 1000,
    )
