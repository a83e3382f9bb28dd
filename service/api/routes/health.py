"""Liveness, readiness and metrics. /healthz and /readyz are open to everyone. /metrics is open
unless METRICS_KEY is set; an open scrape sees what the tenants stored (class counts) only where
the service runs without API keys."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field
from sqlalchemy import text
from sqlalchemy.orm import Session

from service.api.deps import (
    BackgroundChecksDep,
    MetricsDep,
    MetricsDetailDep,
    ProducerDep,
    RuntimeHolderDep,
    SchemaCheckDep,
    SessionDep,
    WorkerPresenceDep,
)
from service.api.errors import responses
from service.db import SchemaCheck

router = APIRouter(tags=["health"])


class ReadyOut(BaseModel):
    status: str = Field(description="ready, or not ready")
    checks: dict[str, Any] = Field(description="the state of each dependency")
    detail: str | None = Field(None, description="why it is not ready")


@router.get("/healthz", summary="Liveness: the process answers")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    summary="Readiness: model loaded, database reachable and migrated, broker reachable",
    response_model=ReadyOut,
    responses={503: {"model": ReadyOut, "description": "not ready; `detail` says why"}},
)
def readyz(
    runtime: RuntimeHolderDep,
    session: SessionDep,
    producer: ProducerDep,
    background: BackgroundChecksDep,
    presence: WorkerPresenceDep,
    schema: SchemaCheckDep,
) -> JSONResponse:
    checks: dict[str, Any] = {}
    problems: list[str] = []

    if runtime.loaded is not None:
        checks["model"] = runtime.loaded.model_id
    else:
        checks["model"] = False
        if runtime.error:
            problems.append(f"model not loaded: {runtime.error}")
        else:
            loading = runtime.progress.as_dict()
            checks["loading"] = loading
            done = f" {loading['done']}/{loading['total']} words" if "total" in loading else ""
            problems.append(f"model loading: {loading['stage']}{done}")
    try:
        session.execute(text("SELECT 1"))
        checks["database"] = True
    except Exception as exc:
        checks["database"] = False
        problems.append(f"database unreachable: {type(exc).__name__}")
    else:
        behind = _schema_problem(schema, session)
        checks["schema"] = behind is None
        if behind is not None:
            problems.append(behind)
    try:
        producer.ping()
        checks["broker"] = True
    except Exception as exc:
        checks["broker"] = False
        problems.append(f"broker unreachable: {type(exc).__name__}")
    warnings: list[str] = []
    if presence is not None:
        try:
            seen = presence.read()
            checks["workers"] = seen.alive
            if not seen.alive:
                last = "never" if seen.last_seen_s is None else f"{seen.last_seen_s:.0f} s ago"
                warnings.append(
                    f"no queue worker seen within {seen.absent_after_s:.0f} s (last: {last}); "
                    "registered classes wait in the queue"
                )
        except Exception as exc:
            checks["workers"] = None
            warnings.append(f"worker heartbeats unreadable: {type(exc).__name__}")
    for name, alive in background.items():
        checks[name] = alive
        if not alive:
            problems.append(f"{name} is not running")

    # Warnings leave the API ready: it classifies without workers, only training waits.
    extra = {"warnings": warnings} if warnings else {}
    if problems:
        return JSONResponse(
            {"status": "not ready", "detail": "; ".join(problems), "checks": checks, **extra},
            status_code=503,
        )
    return JSONResponse({"status": "ready", "checks": checks, **extra})


def _schema_problem(schema: SchemaCheck, session: Session) -> str | None:
    try:
        return schema.problem(session)
    except SystemExit:  # no migrations/ next to the code or in the working directory: unknown
        return None
    except Exception as exc:
        return f"database schema unreadable: {type(exc).__name__}"


@router.get(
    "/metrics",
    summary="Prometheus metrics (with METRICS_KEY: only for it or an admin key)",
    response_class=Response,
    responses={
        200: {"content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}},
        **responses(401),
    },
)
def metrics(metrics: MetricsDep, detail: MetricsDetailDep) -> Response:
    body = generate_latest(metrics.registry)
    if detail:
        body += generate_latest(metrics.detail_registry)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
