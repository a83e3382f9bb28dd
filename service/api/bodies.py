"""Request bodies read by hand, as multipart or JSON, into one shape per operation.

The routes that take images accept `multipart/form-data` (files) and `application/json` (base64
strings), chosen by the request's Content-Type. FastAPI's own body parameters can express only
one of them, so these dependencies parse the body and validate the non-image fields with the
models in `service/api/schemas.py`; an invalid field is the same 422 FastAPI would send. Images
are checked later, by `load_image`, with the same rules and limits whichever way they came.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Request, status
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData, ImmutableMultiDict, UploadFile

from service.api.deps import SettingsDep
from service.api.json_reader import JsonRefused, TooManyItems, read_json
from service.api.schemas import (
    ClassBundle,
    ClassifyFields,
    ClassifyJson,
    EmbeddingsJson,
    OpenAIEmbeddingsJson,
    RegisterClassJson,
    RegisterFields,
)
from service.api.uploads import (
    CHECK_SIDE,
    CheckedImage,
    PixelBudget,
    check_declared_type,
    check_image_bytes,
    error,
    read_image,
)
from service.core.config import Settings

M = TypeVar("M", bound=BaseModel)

# `data:image/png;base64,` before the base64 text, as browsers' FileReader writes it.
_DATA_URL = re.compile(r"^data:([\w.+-]+/[\w.+-]+)?(;[\w-]+=[\w.-]+)*;base64,", re.ASCII)
# An OpenAI `input` item that is an image rather than a text.
_IMAGE_DATA_URL = re.compile(r"^data:image/[\w.+-]+(;[\w-]+=[\w.-]+)*;base64,", re.ASCII)
# Anything that names a resource instead of carrying bytes: the service never fetches.
_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://|^www\.", re.ASCII)
_FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")
URL_REFUSED = "image URLs are not fetched; send the image's bytes (multipart, or base64 in JSON)"
# JSON bodies up to this size are read on the event loop (well under a millisecond); larger ones
# on a thread, so base64 images of many megabytes never hold up other requests.
_READ_INLINE_BYTES = 64 * 1024


@dataclass(frozen=True)
class ImageInput:
    """One image as sent: a multipart upload, base64 text from a JSON body, or the raw body."""

    field: str  # where it was: `images[2]`
    upload: UploadFile | None = None
    text: str | None = None
    data: bytes | None = None  # the whole body was the image
    content_type: str | None = None  # ...declared as this


def load_image(
    source: ImageInput,
    settings: Settings,
    *,
    budget: PixelBudget | None = None,
    min_side: int = CHECK_SIDE,
) -> CheckedImage:
    """Check and decode one image (CPU work: run it off the event loop), reduced to `min_side`,
    its decoded pixels taken from the request's `budget`."""
    if source.upload is not None:
        return read_image(
            source.upload,  # type: ignore[arg-type]
            settings,
            field=source.field,
            budget=budget,
            min_side=min_side,
        )
    if source.data is not None:
        check_declared_type(source.content_type, source.field)
        return check_image_bytes(
            source.data, settings, label=source.field, budget=budget, min_side=min_side
        )
    assert source.text is not None
    text, declared = source.text, None
    if (prefix := _DATA_URL.match(text)) is not None:
        text, declared = text[prefix.end() :], prefix.group(1)
    check_declared_type(declared, source.field)
    # The size is known from the text's length: a too-large image is refused before decoding.
    if decoded_length(text) > settings.max_image_bytes:
        raise error(
            status.HTTP_413_CONTENT_TOO_LARGE,
            f"{source.field} is larger than {settings.max_image_bytes} bytes",
        )
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise error(422, f"{source.field} is not valid base64") from None
    return check_image_bytes(data, settings, label=source.field, budget=budget, min_side=min_side)


def decoded_length(text: str) -> int:
    """Bytes that base64 `text` decodes to (an upper bound when it is malformed)."""
    padding = len(text) - len(text.rstrip("="))
    return max(0, len(text) * 3 // 4 - min(padding, 2))


@dataclass(frozen=True)
class RegisterBody:
    fields: RegisterFields
    images: list[ImageInput]
    negative_images: list[ImageInput]  # "not this class", checked like `images`


@dataclass(frozen=True)
class ClassifyBody:
    fields: ClassifyFields
    images: list[ImageInput]
    batch: bool  # sent as `images` (a list answered per image) rather than one `image`


@dataclass(frozen=True)
class EmbeddingsBody:
    images: list[ImageInput]
    texts: list[str]
    # Sent in OpenAI's shape (`input`): answered in OpenAI's shape, item by item in `order`,
    # each ("image" or "text", its index in `images` or `texts`).
    openai: OpenAIEmbeddingsJson | None = None
    order: tuple[tuple[str, int], ...] = ()


async def register_body(request: Request, settings: SettingsDep) -> AsyncIterator[RegisterBody]:
    limits = {
        "images": settings.max_images,
        "negative_images": settings.max_images,
        "hints": settings.max_hints,
        "confusers": settings.max_hints,
    }
    async with _Parsed(request, limits) as (form, document):
        if form is not None:
            fields = _validate(RegisterFields, _text_fields(form, RegisterFields, limits))
            images = _files(form, "images")
            negatives = _files(form, "negative_images")
        else:
            parsed = _validate(RegisterClassJson, document)
            fields = RegisterFields.model_validate(
                parsed.model_dump(exclude={"images", "negative_images"})
            )
            images = _texts("images", parsed.images)
            negatives = _texts("negative_images", parsed.negative_images or [])
        if not images:
            _invalid("images", "at least one image is required", "missing")
        for name, found in (("images", images), ("negative_images", negatives)):
            if len(found) > settings.max_images:
                raise error(
                    422, f"at most {settings.max_images} {name} are allowed, got {len(found)}"
                )
        yield RegisterBody(fields, images, negatives)


async def classify_body(request: Request, settings: SettingsDep) -> AsyncIterator[ClassifyBody]:
    limits = _classify_limits(settings)
    kind = _media_type(request)
    if raw_image_body(kind):
        yield await _raw_classify_body(request, kind, limits)
        return
    async with _Parsed(request, limits, raw_images=True) as (form, document):
        if form is not None:
            fields = _validate(ClassifyFields, _text_fields(form, ClassifyFields, limits))
            single, many = _files(form, "image"), _files(form, "images")
            if len(single) > 1:
                raise error(
                    422,
                    f"image was sent {len(single)} times; send one `image`, or several "
                    f"`images` (at most {settings.max_classify_images})",
                )
        else:
            parsed = _validate(ClassifyJson, document)
            fields = ClassifyFields.model_validate(parsed.model_dump(exclude={"image", "images"}))
            single = _texts("image", [parsed.image] if parsed.image is not None else [])
            many = _texts("images", parsed.images or [])
        if single and many:
            raise error(422, "send either `image` or `images`, not both")
        if not single and not many:
            _invalid("image", "Field required (or send `images`)", "missing")
        if len(many) > settings.max_classify_images:
            raise error(
                422,
                f"at most {settings.max_classify_images} images are allowed, got {len(many)}",
            )
        yield ClassifyBody(fields, single or many, batch=bool(many))


def _classify_limits(settings: Settings) -> dict[str, int]:
    return {"images": settings.max_classify_images, "labels": settings.max_labels}


async def raw_classify_body(request: Request, settings: Settings) -> ClassifyBody:
    """`classify_body` of a request whose body is one image (`raw_image_body`)."""
    return await _raw_classify_body(request, _media_type(request), _classify_limits(settings))


def raw_image_body(kind: str) -> bool:
    """Whether a body of this media type is one image, sent as is (no form, no base64)."""
    return kind.startswith("image/") or kind == "application/octet-stream"


async def _raw_classify_body(
    request: Request, kind: str, limits: Mapping[str, int]
) -> ClassifyBody:
    """The body is the image itself (`Content-Type: image/jpeg`, ...): the lean way to send one
    image, no multipart to build or parse. The other fields come from the query string
    (`?top_k=3&labels=cat&labels=dog&abstain=true`), checked as the form's are."""
    values = _text_fields(request.query_params, ClassifyFields, limits)
    try:
        fields = ClassifyFields.model_validate(values)
    except ValidationError as exc:
        raise RequestValidationError(
            [{**e, "loc": ("query", *e["loc"])} for e in exc.errors(include_url=False)]
        ) from None
    image = ImageInput("image", data=await request.body(), content_type=kind)
    return ClassifyBody(fields, [image], batch=False)


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


async def embeddings_body(request: Request, settings: SettingsDep) -> AsyncIterator[EmbeddingsBody]:
    limits = {
        "images": settings.max_classify_images,
        "texts": settings.max_labels,
        "input": settings.max_classify_images + settings.max_labels,
    }
    async with _Parsed(request, limits, json_only=True) as (_form, document):
        if isinstance(document, dict) and "input" in document:
            yield _openai_embeddings(document, settings)
            return
        parsed = _validate(EmbeddingsJson, document)
        images = _texts("images", parsed.images)
        if not images and not parsed.texts:
            raise error(422, "send at least one of `images` and `texts`")
        if len(images) > settings.max_classify_images:
            raise error(
                422,
                f"at most {settings.max_classify_images} images are allowed, got {len(images)}",
            )
        if len(parsed.texts) > settings.max_labels:
            raise error(
                422, f"at most {settings.max_labels} texts are allowed, got {len(parsed.texts)}"
            )
        yield EmbeddingsBody(images, parsed.texts)


def _openai_embeddings(document: dict[str, Any], settings: Settings) -> EmbeddingsBody:
    """OpenAI's request: every `input` item is a text, or an image when it is a
    `data:image/...;base64,` URI (as Infinity reads it)."""
    raw = document.get("input")
    items = raw if isinstance(raw, list) else [raw]
    if any(isinstance(item, int | list) for item in items):
        raise error(422, "input: token arrays are not accepted; send the texts themselves")
    parsed = _validate(OpenAIEmbeddingsJson, document)
    items = [parsed.input] if isinstance(parsed.input, str) else parsed.input
    if not items:
        raise error(422, "input must not be empty")
    images: list[ImageInput] = []
    texts: list[str] = []
    order: list[tuple[str, int]] = []
    for index, item in enumerate(items):
        if _IMAGE_DATA_URL.match(item):
            order.append(("image", len(images)))
            images.append(ImageInput(f"input[{index}]", text=item))
        else:
            order.append(("text", len(texts)))
            texts.append(item)
    if len(images) > settings.max_classify_images:
        raise error(
            422, f"at most {settings.max_classify_images} images are allowed, got {len(images)}"
        )
    if len(texts) > settings.max_labels:
        raise error(422, f"at most {settings.max_labels} texts are allowed, got {len(texts)}")
    return EmbeddingsBody(images, texts, openai=parsed, order=tuple(order))


@dataclass(frozen=True)
class ImportBody:
    bundle: ClassBundle
    images: list[ImageInput]
    negative_images: list[ImageInput]


# A learned word's vector holds one number per dimension; no CLIP is wider than this.
_MAX_VECTOR = 8192


async def import_body(request: Request, settings: SettingsDep) -> AsyncIterator[ImportBody]:
    limits = {
        "images": settings.max_images,
        "negative_images": settings.max_images,
        "hints": settings.max_hints,
        "confusers": settings.max_hints,
        "templates": 256,
        "text_feature": _MAX_VECTOR,
        "token_embedding": _MAX_VECTOR,
    }
    async with _Parsed(request, limits, json_only=True) as (_form, document):
        bundle = _validate(ClassBundle, document)
        yield ImportBody(
            bundle,
            _texts("images", bundle.images),
            _texts("negative_images", bundle.negative_images),
        )


RegisterBodyDep = Annotated[RegisterBody, Depends(register_body)]
ImportBodyDep = Annotated[ImportBody, Depends(import_body)]
ClassifyBodyDep = Annotated[ClassifyBody, Depends(classify_body)]
EmbeddingsBodyDep = Annotated[EmbeddingsBody, Depends(embeddings_body)]


class _Parsed:
    """The body as (form, None) or (None, JSON document); the form's files are closed on exit.

    `limits` caps the items of each list field as sent (before any de-duplication); a JSON body
    is refused at the first item past its field's limit, before the rest is read."""

    def __init__(
        self,
        request: Request,
        limits: Mapping[str, int],
        *,
        json_only: bool = False,
        raw_images: bool = False,
    ) -> None:
        self._request = request
        self._limits = limits
        self._json_only = json_only
        self._raw_images = raw_images  # the route also takes an image as the body (415 says so)
        self._form: FormData | None = None

    async def __aenter__(self) -> tuple[FormData | None, Any]:
        kind = self._request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind == "application/json" or kind.endswith("+json"):
            raw = await self._request.body()
            if len(raw) <= _READ_INLINE_BYTES:
                return None, self._read_json(raw)
            return None, await run_in_threadpool(self._read_json, raw)
        if self._json_only and not kind:
            raise RequestValidationError(
                [{"loc": ("body",), "msg": "Field required", "type": "missing"}]
            )
        # No Content-Type (no body at all) reads as an empty form: the 422 names what is missing.
        if not self._json_only and (kind in _FORM_TYPES or not kind):
            self._form = await self._request.form()
            return self._form, None
        accepted = "application/json" if self._json_only else "multipart/form-data or JSON"
        if self._raw_images:
            accepted = "multipart/form-data, JSON or an image"
        raise error(
            status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
            f"the request body must be {accepted}, not {kind or 'missing'}",
        )

    async def __aexit__(self, *_exc: object) -> None:
        if self._form is not None:
            await self._form.close()

    def _read_json(self, raw: bytes) -> Any:
        # Arrays other than the limited fields are never valid here: the smallest cap will do.
        try:
            return read_json(raw, field_limits=self._limits, other_limit=min(self._limits.values()))
        except TooManyItems as exc:
            raise error(422, str(exc)) from None
        except JsonRefused as exc:
            raise RequestValidationError(
                [{"loc": ("body",), "msg": f"JSON decode error: {exc}", "type": "json_invalid"}]
            ) from None


def _text_fields(
    form: ImmutableMultiDict[str, Any], model: type[BaseModel], limits: Mapping[str, int]
) -> dict[str, Any]:
    """The model's fields from the form (or the query string), as FastAPI would read them: an
    empty value is absent, a list field takes every part of its name (at most its limit,
    counted as sent); a scalar sent twice is refused, not guessed."""
    values: dict[str, Any] = {}
    for name, info in model.model_fields.items():
        parts = form.getlist(name)
        if name in limits and len(parts) > limits[name]:
            raise error(422, f"at most {limits[name]} {name} are allowed, got {len(parts)}")
        for part in parts:
            if not isinstance(part, str):
                _invalid(name, "must be text, not a file", "string_type")
        if _is_list(info.annotation):
            if parts:
                values[name] = parts
        elif len(parts) > 1:
            raise error(422, f"{name} was sent {len(parts)} times; send it once")
        elif parts and parts[0] != "":
            values[name] = parts[0]
    return values


def _is_list(annotation: Any) -> bool:
    return "list[" in str(annotation)


def _files(form: FormData, name: str) -> list[ImageInput]:
    found = []
    for index, part in enumerate(form.getlist(name)):
        if not isinstance(part, UploadFile):
            _invalid(name, "must be a file upload, not text", "value_error")
        found.append(ImageInput(_item_field(name, index), upload=part))
    return found


def _texts(name: str, values: list[str]) -> list[ImageInput]:
    found = []
    for index, text in enumerate(values):
        field = _item_field(name, index)
        if _URL.match(text.strip()):
            raise error(422, f"{field}: {URL_REFUSED}")
        found.append(ImageInput(field, text=text))
    return found


def _item_field(name: str, index: int) -> str:
    """How errors name one image: `images[2]`, `negative_images[0]`; a lone `image` as is."""
    return name if name == "image" else f"{name}[{index}]"


def _validate(model: type[M], values: Any) -> M:
    if not isinstance(values, dict):
        raise RequestValidationError(
            [{"loc": ("body",), "msg": "the body must be a JSON object", "type": "dict_type"}]
        )
    for key in values:
        # A URL where an image belongs is refused; a declared URL field (`callback_url`,
        # checked against its allow-list by the route) is not an image.
        if "url" in key.casefold() and key not in model.model_fields:
            raise error(422, f"{key}: {URL_REFUSED}")
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        raise RequestValidationError(
            [{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_url=False)]
        ) from None


def _invalid(field: str, msg: str, kind: str) -> None:
    raise RequestValidationError([{"loc": ("body", field), "msg": msg, "type": kind}])
