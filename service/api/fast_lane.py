"""The hot requests answered without FastAPI's per-request dependency solving.

A raw-body `POST /v1/classify` (`Content-Type: image/...`) and a JSON `POST /v1/embeddings` are
most of the traffic, and on a fast model FastAPI's resolution of their dependencies was the
largest part of the event loop's time per request (cProfile at concurrency 1: 44 % of it, nine
dependency solves per /classify, each recomputing properties of its dependant). A `Lane` is a
route placed before every other: for such a request it calls the same dependency functions and
the same endpoint the FastAPI route declares, itself, in the route's order; any other request
to the path (multipart, another Content-Type, a `tenant` the query validation would refuse, a
dependency swapped through `dependency_overrides`) goes on to the FastAPI route untouched.

What stays the same: every middleware (request ids, metrics with the route's template, body
limits, rate-limit headers) wraps the lane as it wraps the routes; an exception raised here
reaches the app's exception handlers as one raised in a dependency does, so every error keeps
its shape; the OpenAPI document describes the FastAPI routes, which still exist.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import FastAPI, Response
from fastapi.routing import APIRoute
from pydantic import StringConstraints, TypeAdapter, ValidationError
from starlette.datastructures import QueryParams
from starlette.requests import Request
from starlette.routing import BaseRoute, Match
from starlette.types import Receive, Scope, Send

from service.api import bodies
from service.api.deps import (
    ImageModel,
    get_caller,
    get_embeddings_model,
    get_image_model,
    get_settings,
    tenant_scope,
)
from service.api.routes import classify, embeddings
from service.models import TENANT_PATTERN

# The `tenant` query parameter as FastAPI validates it; a request whose value fails goes to the
# FastAPI route, whose 422 names it as every other query error does.
_TENANT = TypeAdapter(Annotated[str, StringConstraints(pattern=TENANT_PATTERN)])

Handler = Callable[[Request, Response], Awaitable[Any]]


class Lane(BaseRoute):
    """POST `route.path` when `takes(content_type)`: `handler(request, response)` returns what
    the route's endpoint returns (a model, serialised as FastAPI would, or a Response)."""

    def __init__(self, route: APIRoute, takes: Callable[[str], bool], handler: Handler) -> None:
        self.route = route
        self.path = route.path
        self.takes = takes
        self.handler = handler
        self.include_in_schema = False
        self._model = TypeAdapter(route.response_model) if route.response_model else None

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        # The FastAPI route's own matching (path behind a proxy's root_path, method); its child
        # scope names the route, so metrics label the request with its template.
        match, child = self.route.matches(scope)
        if (
            match is not Match.FULL
            or not self.takes(_content_type(scope))
            or not _valid_tenant(scope)
            # Dependencies swapped (tests, tools): only FastAPI's resolution knows about them.
            or scope["app"].dependency_overrides
        ):
            return Match.NONE, {}
        return Match.FULL, child

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        # FastAPI's sub-response: headers the endpoint sets on it join the answer.
        sub = Response()
        del sub.headers["content-length"]
        result = await self.handler(request, sub)
        if isinstance(result, Response):
            await result(scope, receive, send)
            return
        assert self._model is not None
        response = Response(self._model.dump_json(result), media_type="application/json")
        response.headers.raw.extend(sub.headers.raw)
        await response(scope, receive, send)


def _valid_tenant(scope: Scope) -> bool:
    """No `tenant` in the query string, or one FastAPI's validation takes (its last value, as
    FastAPI reads a repeated scalar)."""
    if b"tenant" not in scope["query_string"]:
        return True
    tenant = QueryParams(scope["query_string"]).get("tenant")
    if tenant is None:
        return True
    try:
        _TENANT.validate_python(tenant)
    except ValidationError:
        return False
    return True


def _content_type(scope: Scope) -> str:
    for name, value in scope["headers"]:
        if name == b"content-type":
            return value.decode("latin-1").split(";")[0].strip().lower()
    return ""


def _is_json(kind: str) -> bool:
    return kind == "application/json" or kind.endswith("+json")


async def _caller_scope(request: Request) -> str | None:
    """`get_tenant_scope`: the caller authenticated (and its rate limit counted), then its
    tenant."""
    settings = await get_settings(request)
    caller = await get_caller(request, settings, None)
    return tenant_scope(caller, request.query_params.get("tenant"))


async def _classify(request: Request, response: Response) -> Any:
    """`classify`'s parameters in its order: the caller's scope, the settings, the model, the
    body (the raw image, its fields from the query string)."""
    scope = await _caller_scope(request)
    settings = await get_settings(request)
    model: ImageModel = await get_image_model(request)
    body = await bodies.raw_classify_body(request, settings)
    return await classify.classify(response, scope, settings, model, body)


async def _embeddings(request: Request, response: Response) -> Any:
    """`embeddings`' parameters: the caller (the route's dependency, first), the settings, the
    model, the scope, the body (its reader's clean-up run after, as FastAPI runs it)."""
    scope = await _caller_scope(request)
    settings = await get_settings(request)
    model = await get_embeddings_model(request)
    reader = bodies.embeddings_body(request, settings)
    body = await anext(reader)
    try:
        return await embeddings.embeddings(response, settings, model, scope, body)
    finally:
        await reader.aclose()


def _api_route(path: str) -> APIRoute:
    for router in (classify.router, embeddings.router):
        for route in router.routes:
            if isinstance(route, APIRoute) and route.path == path and "POST" in route.methods:
                return route
    raise LookupError(f"no POST route at {path}")


def install(app: FastAPI) -> None:
    """Put the lanes before every route (call after the routers are included)."""
    lanes = [
        Lane(_api_route("/v1/classify"), bodies.raw_image_body, _classify),
        Lane(_api_route("/v1/embeddings"), _is_json, _embeddings),
    ]
    app.router.routes[:0] = lanes
