"""Validation of everything a client sends, done before anything is written."""

from __future__ import annotations

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
    """Labels, hints or confusers: each a name by the same rule, duplicates dropped."""
    try:
        return names.validate_words(values or [], field=field, limit=limit)
    except InvalidNameError as exc:
        raise error(422, str(exc)) from None


@dataclass(frozen=True)
class CheckedImage:
    data: bytes
    image: Image.Image


def read_image(upload: UploadFile, settings: Settings, *, field: str) -> CheckedImage:
    label = f"{field} {upload.filename!r}" if upload.filename else field
    check_declared_type(upload.content_type, label)
    upload.file.seek(0)
    data = upload.file.read(settings.max_image_bytes + 1)
    return check_image_bytes(data, settings, label=label)


def check_declared_type(declared: str | None, label: str) -> None:
    """415 for a declared type that is not an image (none declared: the decoder decides)."""
    kind = (declared or "").lower()
    if kind and not kind.startswith(_ACCEPTED_TYPES):
        raise error(status.HTTP_415_UNSUPPORTED_MEDIA_TYPE, f"{label}: {kind} is not an image type")


def check_image_bytes(data: bytes, settings: Settings, *, label: str) -> CheckedImage:
    """The checks every image gets, however it arrived (multipart part or base64 in JSON)."""
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
        image = decode_image(data, max_pixels=settings.max_image_pixels)
    except ImageTooLargeError as exc:
        raise error(status.HTTP_413_CONTENT_TOO_LARGE, f"{label}: {exc}") from None
    except UnsupportedImageTypeError as exc:
        raise error(status.HTTP_415_UNSUPPORTED_MEDIA_TYPE, f"{label}: {exc}") from None
    except Exception as exc:  # InvalidImageError, and a decoder bug must not become a 500
        raise error(400, f"{label} is not a readable image: {exc}") from None
    return CheckedImage(data=data, image=image)
