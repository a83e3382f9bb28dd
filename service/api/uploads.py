"""Validation of everything a client sends, done before anything is written."""

from __future__ import annotations

import threading
from dataclasses import dataclass

from fastapi import HTTPException, UploadFile, status
from PIL import Image

from liteembed import names
from liteembed.errors import InvalidNameError
from service.core.config import Settings

# Declared types we accept; anything else is refused before decoding. Clients that do not know
# the type send octet-stream (curl does for unknown extensions), and the decoder decides.
_ACCEPTED_TYPES = ("image/", "application/octet-stream")


def error(code: int, detail: str) -> HTTPException:
    return HTTPException(code, detail)


def validate_name(raw: str, *, field: str = "name") -> str:
    """The engine's name rule (liteembed.names), its refusal as a 422."""
    try:
        return names.validate_name(raw, field=field)
    except InvalidNameError as exc:
        raise error(422, str(exc)) from None


def validate_words(values: list[str] | None, *, field: str, limit: int) -> list[str]:
    """Labels, hints or confusers: each a name by the same rule, duplicates dropped. The limit
    counts the values as sent: duplicates are not free (each is checked, then folded)."""
    if values is not None and len(values) > limit:
        raise error(422, f"at most {limit} {field} are allowed, got {len(values)}")
    try:
        return names.validate_words(values or [], field=field, limit=limit)
    except InvalidNameError as exc:
        raise error(422, str(exc)) from None


@dataclass(frozen=True)
class CheckedImage:
    data: bytes  # as uploaded: what is stored
    image: Image.Image  # decoded, reduced to the `min_side` it was read with


# Uploads that are only checked (a registration stores the bytes; the worker decodes them
# again) decode this small: JPEG at 1/8 scale, anything else reduced strip by strip.
CHECK_SIDE = 64


class PixelBudget:
    """The pixels one request (or training batch) may decode, all its images together: decoding
    is the CPU- and memory-heavy part of an upload, and small files can declare huge images.
    JPEG counts at the reduced scale it is decoded at; PNG and other formats at full size."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._lock = threading.Lock()

    def take(self, pixels: int) -> None:
        with self._lock:
            if self.used + pixels > self.limit:
                raise _OverBudget(self.used + pixels, self.limit)
            self.used += pixels


class _OverBudget(Exception):
    def __init__(self, wanted: int, limit: int) -> None:
        super().__init__(wanted, limit)
        self.wanted, self.limit = wanted, limit


def request_budget(settings: Settings) -> PixelBudget:
    return PixelBudget(settings.max_request_pixels)


def read_image(
    upload: UploadFile,
    settings: Settings,
    *,
    field: str,
    budget: PixelBudget | None = None,
    min_side: int = CHECK_SIDE,
) -> CheckedImage:
    label = f"{field} {upload.filename!r}" if upload.filename else field
    check_declared_type(upload.content_type, label)
    upload.file.seek(0)
    data = upload.file.read(settings.max_image_bytes + 1)
    return check_image_bytes(data, settings, label=label, budget=budget, min_side=min_side)


def check_declared_type(declared: str | None, label: str) -> None:
    """415 for a declared type that is not an image (none declared: the decoder decides)."""
    kind = (declared or "").lower()
    if kind and not kind.startswith(_ACCEPTED_TYPES):
        raise error(status.HTTP_415_UNSUPPORTED_MEDIA_TYPE, f"{label}: {kind} is not an image type")


def check_image_bytes(
    data: bytes,
    settings: Settings,
    *,
    label: str,
    budget: PixelBudget | None = None,
    min_side: int = CHECK_SIDE,
) -> CheckedImage:
    """The checks every image gets, however it arrived (multipart part or base64 in JSON).

    The image is decoded once, reduced to `min_side` as it is (its full-size pixels are never
    kept), with its decoded pixels taken from the request's `budget` before decoding."""
    from liteembed.errors import ImageTooLargeError, UnsupportedImageTypeError
    from liteembed.images import decode_image

    if len(data) > settings.max_image_bytes:
        raise error(
            status.HTTP_413_CONTENT_TOO_LARGE,
            f"{label} is larger than {settings.max_image_bytes} bytes",
        )
    if not data:
        raise error(status.HTTP_400_BAD_REQUEST, f"{label} is empty")
    try:
        image = decode_image(
            data,
            max_pixels=settings.max_image_pixels,
            min_side=min_side,
            reserve=budget.take if budget is not None else None,
        )
    except _OverBudget as over:
        raise error(
            status.HTTP_413_CONTENT_TOO_LARGE,
            f"{label}: the request's images would decode to {over.wanted} pixels in all; at "
            f"most {over.limit} are allowed per request (a large JPEG counts at the reduced "
            "scale it decodes at): send fewer or smaller images",
        ) from None
    except ImageTooLargeError as exc:
        raise error(status.HTTP_413_CONTENT_TOO_LARGE, f"{label}: {exc}") from None
    except UnsupportedImageTypeError as exc:
        raise error(status.HTTP_415_UNSUPPORTED_MEDIA_TYPE, f"{label}: {exc}") from None
    except Exception as exc:  # InvalidImageError, and a decoder bug must not become a 500
        raise error(400, f"{label} is not a readable image: {exc}") from None
    return CheckedImage(data=data, image=image)
