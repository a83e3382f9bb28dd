"""Decoding uploaded bytes into 8-bit RGB images, whatever mode or format they arrive in."""

from __future__ import annotations

import contextlib
import io
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from liteembed.errors import ImageTooLargeError, InvalidImageError, UnsupportedImageTypeError

# Raster formats people actually upload. Anything else PIL happens to open (icons of other
# systems, scientific formats, EPS that would shell out to ghostscript) is refused, not guessed.
ALLOWED_FORMATS: frozenset[str] = frozenset(
    {"JPEG", "PNG", "GIF", "BMP", "WEBP", "TIFF", "MPO", "PPM", "TGA"}
)

_WHITE = (255, 255, 255)


def decode_image(data: bytes, *, max_pixels: int | None = None) -> Image.Image:
    """Decode `data` to 8-bit RGB (first frame of animations, EXIF rotation applied)."""
    if not data:
        raise InvalidImageError("empty file: no image data")
    try:
        with warnings.catch_warnings():
            # PIL only warns between 1x and 2x its bomb limit; treat the warning as the error it is.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            fmt = image.format or "unknown"
            if fmt not in ALLOWED_FORMATS:
                raise UnsupportedImageTypeError(
                    f"image format {fmt} is not accepted; use one of {sorted(ALLOWED_FORMATS)}"
                )
            width, height = image.size
            # Checked before decoding the pixels, so a bomb never gets expanded in memory.
            if max_pixels is not None and width * height > max_pixels:
                raise ImageTooLargeError(
                    f"image is {width}x{height} = {width * height} pixels; "
                    f"at most {max_pixels} allowed"
                )
            image.seek(0)
            image.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLargeError(f"image has too many pixels: {exc}") from exc
    except UnidentifiedImageError as exc:
        raise InvalidImageError("the file is not a recognisable image") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        # Truncated or corrupt data: the header parsed but the pixels did not.
        raise InvalidImageError(f"the image could not be decoded: {exc}") from exc
    # A broken EXIF block must not reject an otherwise fine image.
    with contextlib.suppress(Exception):
        image = ImageOps.exif_transpose(image) or image
    return to_rgb(image)


def to_rgb(image: Image.Image) -> Image.Image:
    """Normalise an open image to 8-bit RGB.

    Transparency is composited on white (what a viewer shows), 16-bit and 32-bit integer data is
    scaled down rather than clipped, float data is read as 0..1 when it fits there, else 0..255.
    """
    mode = image.mode
    if mode == "RGB":
        return image
    if mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, _WHITE + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        array = np.asarray(image).astype(np.float64)
        # 16-bit sources (the common case behind "I") span 0..65535; 8-bit-valued "I" stays as is.
        scale = 257.0 if mode.startswith("I;16") or array.max(initial=0) > 255 else 1.0
        return _gray_array_to_rgb(array / scale)
    if mode == "F":
        array = np.asarray(image).astype(np.float64)
        if not np.isfinite(array).all():
            raise UnsupportedImageTypeError("floating-point image contains NaN or infinity")
        if array.size and array.min() >= 0.0 and array.max() <= 1.0:
            array = array * 255.0
        return _gray_array_to_rgb(array)
    try:
        return image.convert("RGB")
    except (ValueError, OSError) as exc:
        raise UnsupportedImageTypeError(f"image mode {mode} cannot be converted to RGB") from exc


def _gray_array_to_rgb(array: np.ndarray) -> Image.Image:
    gray = np.clip(np.rint(array), 0, 255).astype(np.uint8)
    return Image.fromarray(gray).convert("RGB")
