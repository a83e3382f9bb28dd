"""The one error body the API sends, its OpenAPI declaration, and the handlers that shape it.

Every 4xx/5xx answer is JSON with a readable `detail` sentence; a 422 adds `errors`, the
field-level list. `responses(...)` declares exactly these bodies on a route, so the spec says
what the server sends (generated clients parse them as typed errors). Every 503 carries
`Retry-After`; a database that cannot be reached is a 503, logged once per outage.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.db import is_unavailable

log = logging.getLogger(__name__)

# What a 503 asks the client to wait: outages and model loading take seconds to minutes, and a
# client polling every few seconds costs nothing.
RETRY_AFTER_SECONDS = 5


class ErrorOut(BaseModel):
    detail: str = Field(description="what went wrong, in one readable sentence")


class ValidationIssue(BaseModel):
    loc: list[str | int] = Field(description="where: body, query or path, then the field")
    msg: str
    type: str


class ValidationErrorOut(ErrorOut):
    errors: list[ValidationIssue] = Field(description="every invalid field")


_MEANINGS = {
    400: "the image could not be decoded",
    401: "missing or invalid API key",
    403: "the key lacks the role this route needs",
    404: "no such class",
    409: "a conflict with the class's state or name",
    413: "too large: request bytes, image bytes or pixels",
    415: "not an image type the service accepts",
    422: "a missing or invalid field",
    503: "not ready (model loading, database or broker unreachable); retry later",
}


_RETRY_AFTER_HEADER = {
    "Retry-After": {
        "description": "seconds to wait before trying again",
        "required": True,
        "schema": {"type": "integer"},
    }
}


def responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for the error codes a route can answer."""
    declared: dict[int | str, dict[str, Any]] = {}
    for code in codes:
        model = ValidationErrorOut if code == 422 else ErrorOut
        declared[code] = {"model": model, "description": _MEANINGS[code]}
        if code == 503:
            declared[code]["headers"] = _RETRY_AFTER_HEADER
    return declared


async def validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
    # FastAPI's default detail is a list of dicts; clients get one readable sentence as well.
    issues = [
        {
            "loc": [str(p) if not isinstance(p, int) else p for p in err.get("loc", ())],
            "msg": str(err.get("msg", "invalid")),
            "type": str(err.get("type", "value_error")),
        }
        for err in exc.errors()
    ]
    parts = []
    for issue in issues:
        where = ".".join(str(p) for p in issue["loc"] if p not in ("body", "query", "path"))
        parts.append(f"{where}: {issue['msg']}" if where else issue["msg"])
    detail = "; ".join(parts) or "invalid request"
    body = jsonable_encoder({"detail": detail, "errors": issues})
    return JSONResponse(status_code=422, content=body)


async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    """Every HTTPException as an `ErrorOut` (a 422 raised by a route's own checks carries
    `errors` too, so all 422s have one shape)."""
    detail = str(exc.detail)
    body: dict[str, Any] = {"detail": detail}
    headers = dict(exc.headers or {})
    if exc.status_code == 422:
        body["errors"] = [{"loc": ["body"], "msg": detail, "type": "value_error"}]
    if exc.status_code == 405:
        # Starlette answers from the first route whose path matches, so a path served by two
        # routes (GET and DELETE /v1/classes/{id}) would name only one of them in `Allow`.
        body["detail"] = f"{request.method} is not allowed here"
        headers["Allow"] = _methods_of_path(request, headers.get("Allow", ""))
    return JSONResponse(body, exc.status_code, headers=headers or None)


async def database_error(request: Request, exc: Exception) -> JSONResponse:
    """A database that is down or unreachable is a 503 with one log line per outage (the outage
    log ends it at the next connection that works), not a 500 and a traceback per request.
    Any other database error is a bug and stays a 500."""
    if not is_unavailable(exc):
        raise exc
    outage = getattr(request.app.state, "database_outage", None)
    if outage is not None:
        outage.failed(exc)
    return JSONResponse(
        {"detail": "the database is unavailable; try again shortly"},
        503,
        headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
    )


class RetryAfterOn503:
    """Adds `Retry-After` to every 503 that lacks one, whoever answered it (a route's
    HTTPException, a readiness report, a handler)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_retry_after(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] == 503:
                headers = list(message.get("headers", []))
                if not any(name.lower() == b"retry-after" for name, _ in headers):
                    headers.append((b"retry-after", str(RETRY_AFTER_SECONDS).encode()))
                    message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_retry_after)


class ServerErrorsAsJson:
    """An exception no handler took becomes a JSON 500 (`ErrorOut`), logged once with its
    traceback. Installed inside the request-id middleware, so the answer carries `X-Request-ID`
    and the log line names the request (Starlette's own last-resort handler answers plain text,
    outside every middleware)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception:
            if started:  # half an answer is out: only closing the connection is left
                raise
            log.exception("unhandled error in %s %s", scope.get("method"), scope.get("path"))
            response = JSONResponse({"detail": "internal server error"}, status_code=500)
            await response(scope, receive, send)


def _methods_of_path(request: Request, fallback: str) -> str:
    # The route that matched the path (with another method) knows its template; the OpenAPI
    # document knows every method served at that template.
    template = getattr(request.scope.get("route"), "path_format", None)
    operations = request.app.openapi().get("paths", {}).get(template, {})
    methods = sorted(m.upper() for m in operations)
    return ", ".join(methods) if methods else fallback


def install(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, http_error)  # type: ignore[arg-type]
    app.add_exception_handler(DBAPIError, database_error)
    app.add_exception_handler(PoolTimeoutError, database_error)
    app.add_middleware(RetryAfterOn503)
