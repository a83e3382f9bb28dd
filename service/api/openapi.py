"""The OpenAPI document, adjusted where FastAPI's default misleads client generators."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute
from pydantic import BaseModel

from service.api.errors import ValidationErrorOut
from service.api.schemas import REQUEST_BODIES

_REF = "#/components/schemas/{name}"


def operation_id(route: APIRoute) -> str:
    """Short, stable operation ids: the route function's name (`register_class`, `classify`)."""
    return route.name


def request_body(model: type[BaseModel], media_type: str) -> dict[str, Any]:
    """`openapi_extra` declaring a body that the route reads itself (service/api/bodies.py).

    One media type per operation: openapi-python-client 0.29 generates code that does not
    import what it uses for an operation with several, so a JSON body is its own operation.
    """
    title = model.model_config.get("title") or model.__name__
    if model not in REQUEST_BODIES:
        raise ValueError(f"{title} is not in schemas.REQUEST_BODIES, so it would not be declared")
    content = {media_type: {"schema": {"$ref": _REF.format(name=title)}}}
    return {"requestBody": {"required": True, "content": content}}


def _request_bodies(schema: dict[str, Any]) -> None:
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for model in REQUEST_BODIES:
        body = model.model_json_schema(ref_template=_REF.replace("{name}", "{model}"))
        for name, model_schema in body.pop("$defs", {}).items():
            components.setdefault(name, model_schema)
        _not_nullable(body)
        components[body["title"]] = body


def _not_nullable(node: Any) -> None:
    # An optional body field is left out, never null: `anyOf: [X, null]` becomes X, so
    # generators type it `X | Unset` and fuzzers send no nulls a form cannot carry.
    if isinstance(node, dict):
        options = node.get("anyOf")
        if isinstance(options, list) and {"type": "null"} in options and len(options) == 2:
            node.pop("anyOf")
            node.update(next(o for o in options if o != {"type": "null"}))
            if node.get("default", 0) is None:
                node.pop("default")
        for value in node.values():
            _not_nullable(value)
    elif isinstance(node, list):
        for value in node:
            _not_nullable(value)


def _binary_file_fields(node: Any) -> None:
    # OpenAPI 3.1 lets FastAPI describe an upload as `contentMediaType`, which generators such as
    # openapi-python-client type as a plain string; `format: binary` they type as a file.
    if isinstance(node, dict):
        if node.get("type") == "string" and "contentMediaType" in node:
            node.pop("contentMediaType")
            node["format"] = "binary"
        for value in node.values():
            _binary_file_fields(value)
    elif isinstance(node, list):
        for value in node:
            _binary_file_fields(value)


def _one_validation_error(schema: dict[str, Any]) -> None:
    # FastAPI adds a 422 with its own body model to every route with parameters; the server
    # sends `ValidationErrorOut` (service/api/errors.py), so that is what every 422 declares.
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    body = ValidationErrorOut.model_json_schema(ref_template=_REF.replace("{name}", "{model}"))
    for name, model_schema in body.pop("$defs", {}).items():
        components.setdefault(name, model_schema)
    components.setdefault("ValidationErrorOut", body)
    ours = {"application/json": {"schema": {"$ref": _REF.format(name="ValidationErrorOut")}}}
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            invalid = operation.get("responses", {}).get("422")
            if invalid is not None:
                invalid["content"] = ours
    for default in ("HTTPValidationError", "ValidationError"):
        components.pop(default, None)


def install(app: FastAPI) -> None:
    def build() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                summary=app.summary,
                description=app.description,
                routes=app.routes,
            )
            _request_bodies(schema)
            _binary_file_fields(schema)
            _one_validation_error(schema)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = build  # type: ignore[method-assign]
