"""Every resource a route uses, as an Annotated dependency; routes never read `app.state`.

`create_app` (service/main.py) puts the resources on `app.state`; these functions are the only
readers on the request path, so a test can swap one with `app.dependency_overrides`.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Iterator
from concurrent.futures import Executor
from dataclasses import dataclass
from enum import IntEnum
from typing import Annotated

from fastapi import Depends, HTTPException, Query, Request, Security, status
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session
from starlette.datastructures import State

from service.api.rate_limit import STATE_KEY as RATE_LIMIT_STATE_KEY
from service.api.rate_limit import RateLimiter
from service.bank.recorder import BankRecorder
from service.core.config import Settings
from service.db import SchemaCheck, close_quietly
from service.keys import KEY_MARK, KeyLookup
from service.metrics import Metrics
from service.models import DEFAULT_TENANT, TENANT_PATTERN
from service.queue import Producer
from service.runtime import Runtime, RuntimeHolder
from service.scoring.batcher import ModelRunner, preprocess_pool
from service.scoring.labels import TextFeatureCache
from service.scoring.learned_words import LearnedWords
from service.scoring.sync import ClassMatrixCache
from service.thumbnails import ThumbnailCache
from service.worker_presence import WorkerPresence

# Issued keys are 46 characters; anything much longer is not worth hashing.
MAX_TOKEN_CHARS = 128


# The trivial dependencies are `async def` on purpose: FastAPI runs a plain `def` dependency
# on its thread pool, and five thread hops per request were a visible share of a fast /classify.
async def get_settings(request: Request) -> Settings:
    return request.app.state.settings  # type: ignore[no-any-return]


def get_session(request: Request) -> Iterator[Session]:
    session = request.app.state.session_factory()
    try:
        yield session
    finally:
        close_quietly(session)


async def get_runtime_holder(request: Request) -> RuntimeHolder:
    """The model, loaded or not (readiness reports which)."""
    return request.app.state.runtime  # type: ignore[no-any-return]


async def get_runtime(holder: Annotated[RuntimeHolder, Depends(get_runtime_holder)]) -> Runtime:
    """The loaded model; 503 until it is."""
    runtime = holder.loaded
    if runtime is None:
        reason = f": {holder.error}" if holder.error else "; try again shortly"
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, f"model not loaded{reason}")
    return runtime


async def get_classifier(request: Request) -> ClassMatrixCache:
    return request.app.state.classifier  # type: ignore[no-any-return]


async def get_model_runner(request: Request) -> ModelRunner:
    """The thread that runs the image encoder, batching concurrent requests."""
    return request.app.state.model_runner  # type: ignore[no-any-return]


async def get_preprocess_pool(request: Request) -> Executor:
    """Threads that decode and preprocess uploads, off the event loop."""
    return _preprocess_pool(request.app.state)


def _preprocess_pool(state: State) -> Executor:
    # Made by the lifespan; made here when the app runs without one (tests, tools), as the
    # model thread starts itself on first use.
    if state.preprocess_pool is None:
        state.preprocess_pool = preprocess_pool(state.settings.classify_preprocess_threads)
    return state.preprocess_pool  # type: ignore[no-any-return]


async def get_text_features(request: Request) -> TextFeatureCache:
    """CLIP's own text features of plain labels, shared by the process's requests."""
    return request.app.state.text_features  # type: ignore[no-any-return]


async def get_learned_words(request: Request) -> LearnedWords:
    """Token embeddings this process has read, for `{name}` during a database outage."""
    return request.app.state.learned_words  # type: ignore[no-any-return]


async def get_thumbnails(request: Request) -> ThumbnailCache:
    """The thumbnails this process has made (made once per class, kept within a byte budget)."""
    return request.app.state.thumbnails  # type: ignore[no-any-return]


async def get_producer(request: Request) -> Producer:
    return request.app.state.producer  # type: ignore[no-any-return]


async def get_metrics(request: Request) -> Metrics:
    return request.app.state.metrics  # type: ignore[no-any-return]


async def get_worker_presence(request: Request) -> WorkerPresence | None:
    """Standalone workers' heartbeats (Redis mode); None with the embedded worker."""
    return request.app.state.worker_presence  # type: ignore[no-any-return]


async def get_schema_check(request: Request) -> SchemaCheck:
    """Whether the database's schema is at the migrations' head (remembers a yes)."""
    return request.app.state.schema_check  # type: ignore[no-any-return]


async def get_background_checks(request: Request) -> dict[str, bool]:
    """Whether each background thread (embedded worker, reconciler) is alive."""
    return request.app.state.background_checks()  # type: ignore[no-any-return]


@dataclass(frozen=True)
class ImageModel:
    """What /classify uses besides its body, its settings and its caller."""

    runtime: Runtime
    classifier: ClassMatrixCache
    runner: ModelRunner
    pool: Executor
    text_features: TextFeatureCache
    # Keeps confident plain-word answers' features (None: no tenant is opted in).
    bank: BankRecorder | None = None


async def get_image_model(request: Request) -> ImageModel:
    """The loaded model (503 until it is) with the class matrix, the model thread, the
    preprocessing pool and the text features, as one dependency: FastAPI's resolution of each
    dependency costs tens of microseconds per request, a visible share of a fast /classify."""
    state = request.app.state
    return ImageModel(
        runtime=await get_runtime(state.runtime),
        classifier=state.classifier,
        runner=state.model_runner,
        pool=_preprocess_pool(state),
        text_features=state.text_features,
        bank=getattr(state, "bank_recorder", None),
    )


@dataclass(frozen=True)
class EmbeddingsModel:
    """What /embeddings uses besides its body, its settings and its caller."""

    image: ImageModel
    # Token embeddings read before, answered during a database outage.
    learned_words: LearnedWords
    # Opened on the thread that reads learned words, and only for a text naming one: a session
    # per request as a dependency would cost two thread hops (open, close) on every request.
    sessions: Callable[[], Session]


async def get_embeddings_model(request: Request) -> EmbeddingsModel:
    """/embeddings' resources as one dependency (see `get_image_model`)."""
    state = request.app.state
    return EmbeddingsModel(
        image=await get_image_model(request),
        learned_words=state.learned_words,
        sessions=state.session_factory,
    )


SettingsDep = Annotated[Settings, Depends(get_settings)]
SessionDep = Annotated[Session, Depends(get_session)]
RuntimeHolderDep = Annotated[RuntimeHolder, Depends(get_runtime_holder)]
RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
ClassifierDep = Annotated[ClassMatrixCache, Depends(get_classifier)]
ModelRunnerDep = Annotated[ModelRunner, Depends(get_model_runner)]
PreprocessPoolDep = Annotated[Executor, Depends(get_preprocess_pool)]
TextFeaturesDep = Annotated[TextFeatureCache, Depends(get_text_features)]
ThumbnailsDep = Annotated[ThumbnailCache, Depends(get_thumbnails)]
LearnedWordsDep = Annotated[LearnedWords, Depends(get_learned_words)]
ProducerDep = Annotated[Producer, Depends(get_producer)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
BackgroundChecksDep = Annotated[dict[str, bool], Depends(get_background_checks)]
WorkerPresenceDep = Annotated[WorkerPresence | None, Depends(get_worker_presence)]
SchemaCheckDep = Annotated[SchemaCheck, Depends(get_schema_check)]
ImageModelDep = Annotated[ImageModel, Depends(get_image_model)]
EmbeddingsModelDep = Annotated[EmbeddingsModel, Depends(get_embeddings_model)]


class Role(IntEnum):
    client = 1
    admin = 2


@dataclass(frozen=True)
class Caller:
    """Who sent the request: a client of one tenant, or an admin of every tenant."""

    role: Role
    tenant: str | None  # None for admins


def _matches(candidate: bytes, keys: list[str]) -> bool:
    # Compare against every key without stopping early, so timing says nothing about which
    # key (or how much of one) matched.
    found = False
    for key in keys:
        found |= hmac.compare_digest(candidate, key.encode())
    return found


# Declares the Bearer scheme in the OpenAPI document; the checks and messages are our own
# (auto_error=False), so a missing key is a 401 with a readable detail, as for a wrong one.
_bearer = HTTPBearer(auto_error=False, description="an admin or client API key")


async def get_caller(
    request: Request,
    settings: SettingsDep,
    _credentials: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)],
) -> Caller:
    # The key lookup and the rate limiter are read here rather than as dependencies of their
    # own: FastAPI's resolution of each costs tens of microseconds on every authenticated route.
    state = request.app.state
    caller = await _authenticate(request, settings, state.key_lookup)
    limiter: RateLimiter | None = getattr(state, "rate_limiter", None)  # None: RATE_LIMIT unset
    if limiter is not None:
        # Counted per key once it is known to be valid; without one (open mode), per address.
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        token = token.strip() if scheme.lower() == "bearer" else ""
        host = request.client.host if request.client is not None else "unknown"
        decision = await limiter.check(f"key:{token}" if token else f"address:{host}")
        if decision is not None:
            setattr(request.state, RATE_LIMIT_STATE_KEY, decision)
    return caller


async def _authenticate(request: Request, settings: Settings, lookup: KeyLookup) -> Caller:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    has_token = scheme.lower() == "bearer" and bool(token)
    if not settings.auth_enabled and not has_token:
        # Open mode (no keys in the environment): the CLI binds 127.0.0.1 (unless ALLOW_OPEN).
        return Caller(Role.admin, None)
    unauthorized = HTTPException(
        status.HTTP_401_UNAUTHORIZED,
        "missing or invalid API key (send 'Authorization: Bearer <key>')",
        headers={"WWW-Authenticate": "Bearer"},
    )
    if not has_token:
        raise unauthorized
    candidate = token.encode()
    if _matches(candidate, settings.admin_keys):
        return Caller(Role.admin, None)
    if _matches(candidate, settings.client_keys):
        return Caller(Role.client, DEFAULT_TENANT)
    if token.startswith(KEY_MARK) and len(token) <= MAX_TOKEN_CHARS:
        # A remembered answer needs no thread hop; only a database lookup leaves the loop.
        known, holder = lookup.cached(token)
        if not known:
            holder = await run_in_threadpool(lookup.find, token)
        if holder is not None:
            role = Role.admin if holder.role == "admin" else Role.client
            return Caller(role, holder.tenant if role is Role.client else None)
    if not settings.auth_enabled:
        return Caller(Role.admin, None)  # open mode: an unknown token changes nothing
    raise unauthorized


async def require_admin(caller: Annotated[Caller, Depends(get_caller)]) -> Caller:
    if caller.role < Role.admin:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "this route needs an admin key")
    return caller


# Any valid key (a route's `dependencies=[ClientDep]`, or the caller as a parameter); resolved
# once per request however many dependencies ask for it.
ClientDep = Depends(get_caller)
AdminDep = Depends(require_admin)
CallerDep = Annotated[Caller, Depends(get_caller)]


async def get_metrics_detail(request: Request, settings: SettingsDep) -> bool:
    """Whether a /metrics scrape may see what the tenants stored (see `Settings.metrics_key`);
    401 when a metrics key is set and the scrape sends neither it nor an admin key. Only keys
    from the environment count: a scrape must work while the database is away."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    candidate = token.strip().encode() if scheme.lower() == "bearer" else b""
    metrics_key = settings.metrics_key.get_secret_value() if settings.metrics_key else None
    if candidate and _matches(candidate, [*settings.admin_keys, *filter(None, [metrics_key])]):
        return True
    if metrics_key is not None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "missing or invalid metrics key (send 'Authorization: Bearer <key>')",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return not settings.auth_enabled


MetricsDetailDep = Annotated[bool, Depends(get_metrics_detail)]


def tenant_scope(caller: Caller, requested: str | None) -> str | None:
    """The tenant a request acts within; None: every tenant (admins only)."""
    if caller.role is Role.client:
        if requested is not None and requested != caller.tenant:
            raise HTTPException(
                status.HTTP_403_FORBIDDEN, "a client key acts only within its own tenant"
            )
        return caller.tenant
    return requested


TENANT_QUERY_DESCRIPTION = (
    "admin keys: act within this tenant (default: every tenant; a registration goes to "
    "`default`); client keys act within their own tenant"
)


async def get_tenant_scope(
    caller: CallerDep,
    tenant: Annotated[
        str | None, Query(pattern=TENANT_PATTERN, description=TENANT_QUERY_DESCRIPTION)
    ] = None,
) -> str | None:
    return tenant_scope(caller, tenant)


TenantScopeDep = Annotated[str | None, Depends(get_tenant_scope)]
