"""The OpenAPI document, adjusted where FastAPI's default misleads client generators."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute

from service.api.errors import ValidationErrorOut

_REF = "#/components/schemas/{name}"


def operation_id(route: APIRoute) -> str:
    """Short, stable operation ids: the route function's name (`register_class`, `classify`)."""
    return route.name


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
            _binary_file_fields(schema)
            _one_validation_error(schema)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = build  # type: ignore[method-assign]
