"""Decoding uploaded bytes into 8-bit RGB images, whatever mode or format they arrive in, in
bounded memory.

A small file can hold a huge image (a 35 KB PNG of 6000x6000 pixels decodes to 144 MB), so with
`min_side` the decoder keeps only what a model needs: JPEG decodes at a reduced scale
(`draft`), other formats decode once at full size and are converted and box-reduced strip by
strip, so no full-size RGB copy (or a float64 array of a 16-bit image) is ever made; and at most
one large image per process is at full size at any moment.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import io
import sys
import threading
import warnings
from collections.abc import Callable, Iterator

import numpy as np
from PIL import Image, UnidentifiedImageError

from liteembed.errors import ImageTooLargeError, InvalidImageError, UnsupportedImageTypeError

# Raster formats people actually upload. Anything else PIL happens to open (icons of other
# systems, scientific formats, EPS that would shell out to ghostscript) is refused, not guessed.
ALLOWED_FORMATS: frozenset[str] = frozenset(
    {"JPEG", "PNG", "GIF", "BMP", "WEBP", "TIFF", "MPO", "PPM", "TGA"}
)

# With `min_side`, a panorama keeps its central part of at most this aspect ratio: a model sees
# the central square anyway, and a 40000x900 strip would otherwise stay 36M pixels after
# reduction.
MAX_ASPECT = 4

# Images decoding to more pixels than this (16 MB at Pillow's 4 bytes per pixel) take turns,
# one at a time per process: concurrent requests cannot multiply the largest decode.
LARGE_PIXELS = 4_000_000
_large_decodes = threading.Lock()

# Conversion and reduction work on horizontal strips of about this many pixels.
_STRIP_PIXELS = 1 << 20

_WHITE = (255, 255, 255)

# EXIF orientation -> the transpose that shows the image upright (as ImageOps.exif_transpose).
_ORIENTATION = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def decode_image(
    data: bytes,
    *,
    max_pixels: int | None = None,
    min_side: int | None = None,
    reserve: Callable[[int], None] | None = None,
) -> Image.Image:
    """Decode `data` to 8-bit RGB (first frame of animations, EXIF rotation applied).

    `max_pixels` caps the image's declared size (checked before any pixel is decoded). With
    `min_side`, the result is reduced by an integer factor while its shorter side stays at least
    `min_side` (never enlarged), and cropped about its centre to an aspect ratio of at most
    `MAX_ASPECT`. `reserve`, if given, is told how many pixels are about to be decoded (after
    JPEG's reduced-scale decoding) and may raise to refuse them.
    """
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
            if min_side is not None and fmt in ("JPEG", "MPO"):
                _draft(image, min_side)
            decoded = image.size[0] * image.size[1]
            if reserve is not None:
                reserve(decoded)
            with _turn(decoded):
                image.load()
                # After load: PNG's getexif() decodes the whole image to find a late eXIf chunk.
                orientation = _orientation(image)
                rgb = to_rgb(image) if min_side is None else _reduced_rgb(image, min_side)
                if rgb is not image:  # an RGB image is its own result without `min_side`
                    image.close()
                del image
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLargeError(f"image has too many pixels: {exc}") from exc
    except UnidentifiedImageError as exc:
        raise InvalidImageError("the file is not a recognisable image") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        # Truncated or corrupt data: the header parsed but the pixels did not.
        raise InvalidImageError(f"the image could not be decoded: {exc}") from exc
    if orientation is not None:
        rgb = rgb.transpose(orientation)
    return rgb


def _orientation(image: Image.Image) -> Image.Transpose | None:
    # A broken EXIF block must not reject an otherwise fine image.
    with contextlib.suppress(Exception):
        return _ORIENTATION.get(int(image.getexif().get(0x0112, 1)))
    return None


def _draft(image: Image.Image, min_side: int) -> None:
    """Let the JPEG decoder produce 1/2, 1/4 or 1/8 scale when the short side allows it."""
    width, height = image.size
    scale = min_side / min(width, height)
    if scale < 1:
        image.draft(None, (max(1, int(width * scale + 0.5)), max(1, int(height * scale + 0.5))))


@contextlib.contextmanager
def _turn(pixels: int) -> Iterator[None]:
    if pixels <= LARGE_PIXELS:
        yield
        return
    with _large_decodes:
        try:
            yield
        finally:
            _release_freed_memory()


def _load_malloc_trim() -> Callable[[int], int] | None:
    with contextlib.suppress(OSError, AttributeError):
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim  # type: ignore[no-any-return]
    return None


_malloc_trim = _load_malloc_trim() if sys.platform.startswith("linux") else None


def _release_freed_memory() -> None:
    """Give a large decode's freed pixels back to the OS. glibc keeps freed memory in the arena
    of the thread that freed it; decodes run on several threads (request threads, the
    preprocessing pool, the worker), so without this each thread would keep the largest image
    it ever decoded, and the process would not shrink back after a burst."""
    if _malloc_trim is not None:
        _malloc_trim(0)


def _reduced_rgb(image: Image.Image, min_side: int) -> Image.Image:
    """The central part of `image` (aspect <= MAX_ASPECT) as RGB, box-reduced by the largest
    integer factor that keeps its short side >= min_side, converted strip by strip."""
    width, height = image.size
    box_w = min(width, MAX_ASPECT * height)
    box_h = min(height, MAX_ASPECT * width)
    left, top = (width - box_w) // 2, (height - box_h) // 2
    factor = max(1, min(box_w, box_h) // max(1, min_side))
    if factor == 1 and (box_w, box_h) == (width, height) and image.mode == "RGB":
        return image.copy()  # nothing to convert or reduce; `image` itself is closed next
    extrema = image.getextrema() if image.mode in ("I", "F") else None
    out = Image.new("RGB", (-(-box_w // factor), -(-box_h // factor)))
    rows = max(factor, _STRIP_PIXELS // box_w // factor * factor)
    for y in range(top, top + box_h, rows):
        strip = image.crop((left, y, left + box_w, min(y + rows, top + box_h)))
        rgb = to_rgb(strip, extrema=extrema)
        if factor > 1:
            rgb = rgb.reduce(factor)
        out.paste(rgb, (0, (y - top) // factor))
    return out


def to_rgb(image: Image.Image, *, extrema: object = None) -> Image.Image:
    """Normalise an open image to 8-bit RGB.

    Transparency is composited on white (what a viewer shows), 16-bit and 32-bit integer data is
    scaled down rather than clipped, float data is read as 0..1 when it fits there, else 0..255.
    `extrema` (`getextrema()` of the whole image) makes a strip convert as the whole would.
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
        high = _high(extrema) if extrema is not None else array.max(initial=0)
        # 16-bit sources (the common case behind "I") span 0..65535; 8-bit-valued "I" stays as is.
        scale = 257.0 if mode.startswith("I;16") or high > 255 else 1.0
        return _gray_array_to_rgb(array / scale)
    if mode == "F":
        array = np.asarray(image).astype(np.float64)
        if not np.isfinite(array).all():
            raise UnsupportedImageTypeError("floating-point image contains NaN or infinity")
        low, high = (
            (_low(extrema), _high(extrema))
            if extrema is not None
            else (array.min(initial=0.0), array.max(initial=0.0))
        )
        if array.size and low >= 0.0 and high <= 1.0:
            array = array * 255.0
        return _gray_array_to_rgb(array)
    try:
        return image.convert("RGB")
    except (ValueError, OSError) as exc:
        raise UnsupportedImageTypeError(f"image mode {mode} cannot be converted to RGB") from exc


def _low(extrema: object) -> float:
    return float(extrema[0])  # type: ignore[index]


def _high(extrema: object) -> float:
    return float(extrema[1])  # type: ignore[index]


def _gray_array_to_rgb(array: np.ndarray) -> Image.Image:
    gray = np.clip(np.rint(array), 0, 255).astype(np.uint8)
    return Image.fromarray(gray).convert("RGB")
