"""Validation of everything a client sends, done before anything is written."""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass

from fastapi import HTTPException, UploadFile, status
from PIL import Image

from service.core.config import Settings

# Declared types we accept; anything else is refused before decoding. Clients that do not know
# the type send octet-stream (curl does for unknown extensions), and the decoder decides.
_ACCEPTED_TYPES = ("image/", "application/octet-stream")

# Beyond letters, digits and marks (any script), a few separators common in names.
_NAME_PUNCTUATION = frozenset(" -_'.&()+,/")


def error(code: int, detail: str) -> HTTPException:
    return HTTPException(code, detail)


def normalize_text(value: str) -> str:
    return " ".join(unicodedata.normalize("NFC", value).split())


def name_key(name: str) -> str:
    return normalize_text(name).casefold()


def validate_name(raw: str, settings: Settings, *, field: str = "name") -> str:
    name = normalize_text(raw)
    if not name:
        raise error(422, f"{field} must not be empty")
    if len(name) > settings.max_name_length:
        raise error(422, f"{field} is longer than {settings.max_name_length} characters")
    for ch in name:
        category = unicodedata.category(ch)
        if category[0] in "LNM" or ch in _NAME_PUNCTUATION:
            continue
        raise error(
            422,
            f"{field} {name!r} contains {ch!r}: "
            "use letters, digits, spaces and - _ ' . & ( ) + , /",
        )
    if not any(unicodedata.category(ch)[0] in "LN" for ch in name):
        raise error(422, f"{field} must contain a letter or a digit")
    return name


def validate_words(
    values: list[str] | None, settings: Settings, *, field: str, limit: int
) -> list[str]:
    words: list[str] = []
    seen: set[str] = set()
    for raw in values or []:
        word = validate_name(raw, settings, field=field)
        if word.casefold() not in seen:
            seen.add(word.casefold())
            words.append(word)
    if len(words) > limit:
        raise error(422, f"at most {limit} {field} values are allowed")
    return words


@dataclass(frozen=True)
class CheckedImage:
    data: bytes
    image: Image.Image


def read_image(upload: UploadFile, settings: Settings, *, field: str) -> CheckedImage:
    from liteembed.errors import ImageTooLargeError, UnsupportedImageTypeError
    from liteembed.images import decode_image

    label = f"{field} {upload.filename!r}" if upload.filename else field
    declared = (upload.content_type or "").lower()
    if declared and not declared.startswith(_ACCEPTED_TYPES):
        raise error(
            status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
            f"{label}: {declared} is not an image type",
        )
    upload.file.seek(0)
    data = upload.file.read(settings.max_image_bytes + 1)
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
