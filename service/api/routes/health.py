"""Liveness, readiness and metrics; open to everyone (put /metrics behind the network edge)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field
from sqlalchemy import text

from service.api.deps import (
    BackgroundChecksDep,
    MetricsDep,
    ProducerDep,
    RuntimeHolderDep,
    SessionDep,
)

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
    summary="Readiness: model loaded, database and broker reachable",
    response_model=ReadyOut,
    responses={503: {"model": ReadyOut, "description": "not ready; `detail` says why"}},
)
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


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}}},
)
def metrics(metrics: MetricsDep) -> Response:
    body = generate_latest(metrics.registry)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
