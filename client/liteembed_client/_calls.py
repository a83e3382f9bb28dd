"""The service's operations as plain descriptions of a request and of how to read its answer,
so the sync and the async client run the same code and differ only in how they wait."""

from __future__ import annotations

import base64
import mimetypes
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar
from urllib.parse import quote

import httpx

from liteembed_client.errors import error_for
from liteembed_client.models import (
    Classification,
    ClassInfo,
    ClassPage,
    ClassStatus,
    Embedding,
    Embeddings,
    Vocabulary,
)

T = TypeVar("T")

# An image to upload: a file path, raw bytes, or (filename, bytes).
ImageSource = str | os.PathLike[str] | bytes | tuple[str, bytes]

_Upload = tuple[str, tuple[str, bytes, str]]


@dataclass(frozen=True)
class Call(Generic[T]):
    method: str
    path: str
    read: Callable[[httpx.Response], T]
    params: dict[str, Any] | None = None
    data: dict[str, Any] | None = None
    files: list[_Upload] | None = None
    json: dict[str, Any] | None = None

    def request_args(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "url": self.path,
            "params": self.params,
            "data": self.data,
            "files": self.files,
            "json": self.json,
        }

    def result(self, response: httpx.Response) -> T:
        if response.is_error:
            raise error_for(response)
        return self.read(response)


def _read(source: ImageSource, index: int) -> tuple[str, bytes]:
    if isinstance(source, bytes):
        return f"image-{index}", source
    if isinstance(source, tuple):
        return source
    path = Path(source)
    return path.name, path.read_bytes()


def upload(field: str, source: ImageSource, index: int = 0) -> _Upload:
    """One multipart file part. Files are read into memory, so a retry can send them again."""
    filename, data = _read(source, index)
    guessed, _ = mimetypes.guess_type(filename)
    # Unknown types go as octet-stream and the service's decoder decides.
    image_type = guessed if guessed and guessed.startswith("image/") else None
    return (field, (filename, data, image_type or "application/octet-stream"))


def _class_path(class_id: str, suffix: str = "") -> str:
    # Quoted: an id is data, never more path.
    return f"/v1/classes/{quote(class_id, safe='')}{suffix}"


def _model(kind: type[T]) -> Callable[[httpx.Response], T]:
    return lambda response: kind.model_validate(response.json())  # type: ignore[attr-defined,no-any-return]


def register_class(
    name: str,
    images: Iterable[ImageSource],
    *,
    hints: Iterable[str] = (),
    confusers: Iterable[str] = (),
    replace: bool = False,
    negative_images: Iterable[ImageSource] = (),
    callback_url: str | None = None,
) -> Call[ClassInfo]:
    data: dict[str, Any] = {"name": name, "replace": "true" if replace else "false"}
    if callback_url is not None:
        data["callback_url"] = callback_url
    if hints := list(hints):
        data["hints"] = hints
    if confusers := list(confusers):
        data["confusers"] = confusers
    files = [upload("images", source, i) for i, source in enumerate(images)]
    files += [upload("negative_images", source, i) for i, source in enumerate(negative_images)]
    return Call("POST", "/v1/classes", _model(ClassInfo), data=data, files=files)


def get_class(class_id: str) -> Call[ClassInfo]:
    return Call("GET", _class_path(class_id), _model(ClassInfo))


def list_classes(
    *,
    status: ClassStatus | None = None,
    limit: int = 50,
    offset: int = 0,
    tenant: str | None = None,
) -> Call[ClassPage]:
    params: dict[str, Any] = {"limit": limit, "offset": offset}
    if status is not None:
        params["status"] = status
    if tenant is not None:
        params["tenant"] = tenant
    return Call("GET", "/v1/classes", _model(ClassPage), params=params)


def delete_class(class_id: str) -> Call[None]:
    return Call("DELETE", _class_path(class_id), lambda _response: None)


def get_embedding(class_id: str) -> Call[Embedding]:
    return Call("GET", _class_path(class_id, "/embedding"), _model(Embedding))


def export_class(class_id: str, *, images: bool = True) -> Call[dict[str, Any]]:
    params = {"images": "true" if images else "false"}
    return Call("GET", _class_path(class_id, "/export"), lambda r: r.json(), params=params)


def import_class(bundle: Mapping[str, Any], *, replace: bool = False) -> Call[ClassInfo]:
    params = {"replace": "true"} if replace else None
    return Call("POST", "/v1/classes:import", _model(ClassInfo), params=params, json=dict(bundle))


def vocabulary(*, prefix: str = "", limit: int = 100) -> Call[Vocabulary]:
    params = {"prefix": prefix, "limit": limit}
    return Call("GET", "/v1/vocabulary", _model(Vocabulary), params=params)


def _classify_fields(labels: Iterable[str] | None, top_k: int, abstain: bool) -> dict[str, Any]:
    data: dict[str, Any] = {"top_k": str(top_k)}
    if labels is not None and (chosen := list(labels)):
        data["labels"] = chosen
    if abstain:
        data["abstain"] = "true"
    return data


def classify(
    image: ImageSource,
    *,
    labels: Iterable[str] | None = None,
    top_k: int = 5,
    abstain: bool = False,
) -> Call[Classification]:
    data = _classify_fields(labels, top_k, abstain)
    return Call(
        "POST", "/v1/classify", _model(Classification), data=data, files=[upload("image", image)]
    )


def _predictions_per_image(response: httpx.Response) -> list[Classification]:
    body = response.json()
    return [
        Classification.model_validate({"model": body["model"], **result})
        for result in body["results"]
    ]


def classify_many(
    images: Iterable[ImageSource],
    *,
    labels: Iterable[str] | None = None,
    top_k: int = 5,
    abstain: bool = False,
) -> Call[list[Classification]]:
    """One request for several images (at most the service's MAX_CLASSIFY_IMAGES)."""
    data = _classify_fields(labels, top_k, abstain)
    files = [upload("images", source, i) for i, source in enumerate(images)]
    return Call("POST", "/v1/classify", _predictions_per_image, data=data, files=files)


def embed(images: Iterable[ImageSource] = (), texts: Iterable[str] = ()) -> Call[Embeddings]:
    encoded = [base64.b64encode(_read(source, i)[1]).decode() for i, source in enumerate(images)]
    body = {"images": encoded, "texts": list(texts)}
    return Call("POST", "/v1/embeddings", _model(Embeddings), json=body)
