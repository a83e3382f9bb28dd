"""Liveness, readiness and metrics; open to everyone (put /metrics behind the network edge)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from service.api.deps import (
    BackgroundChecksDep,
    MetricsDep,
    ProducerDep,
    RuntimeHolderDep,
    SessionDep,
)

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="Liveness: the process answers")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", summary="Readiness: model loaded, database and broker reachable")
def readyz(
    runtime: RuntimeHolderDep,
    session: SessionDep,
    producer: ProducerDep,
    background: BackgroundChecksDep,
) -> JSONResponse:
    checks: dict[str, Any] = {}
    problems: list[str] = []

    if runtime.loaded is not None:
        checks["model"] = runtime.loaded.model_id
    else:
        checks["model"] = False
        reason = f": {runtime.error}" if runtime.error else ""
        problems.append(f"model not loaded{reason}")
    try:
        session.execute(text("SELECT 1"))
        checks["database"] = True
    except Exception as exc:
        checks["database"] = False
        problems.append(f"database unreachable: {type(exc).__name__}")
    try:
        producer.ping()
        checks["broker"] = True
    except Exception as exc:
        checks["broker"] = False
        problems.append(f"broker unreachable: {type(exc).__name__}")
    for name, alive in background.items():
        checks[name] = alive
        if not alive:
            problems.append(f"{name} is not running")

    if problems:
        return JSONResponse(
            {"status": "not ready", "detail": "; ".join(problems), "checks": checks},
            status_code=503,
        )
    return JSONResponse({"status": "ready", "checks": checks})


@router.get("/metrics", summary="Prometheus metrics")
def metrics(metrics: MetricsDep) -> Response:
    body = generate_latest(metrics.registry)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
