"""Liveness, readiness and metrics; open to everyone (put /metrics behind the network edge)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from service.queue import ping

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="Liveness: the process answers")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", summary="Readiness: model loaded, database and broker reachable")
def readyz(request: Request) -> JSONResponse:
    state = request.app.state
    checks: dict[str, Any] = {}
    problems: list[str] = []

    if state.runtime.loaded is not None:
        checks["model"] = state.runtime.loaded.model_id
    else:
        checks["model"] = False
        reason = f": {state.runtime.error}" if state.runtime.error else ""
        problems.append(f"model not loaded{reason}")
    try:
        with state.session_factory() as session:
            session.execute(text("SELECT 1"))
        checks["database"] = True
    except Exception as exc:
        checks["database"] = False
        problems.append(f"database unreachable: {type(exc).__name__}")
    try:
        ping(state.broker)
        checks["broker"] = True
    except Exception as exc:
        checks["broker"] = False
        problems.append(f"broker unreachable: {type(exc).__name__}")
    for name, alive in state.background_checks().items():
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
def metrics(request: Request) -> Response:
    body = generate_latest(request.app.state.metrics.registry)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
