"""Decoding and normalising uploads of every common mode into 8-bit RGB."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from liteembed import (
    ClipBackend,
    ImageTooLargeError,
    InvalidImageError,
    UnsupportedImageTypeError,
    decode_image,
    to_rgb,
)


def _encode(image: Image.Image, fmt: str = "PNG", **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _sixteen_bit() -> Image.Image:
    array = np.full((6, 5), 65535, dtype=np.uint16)
    array[0, 0] = 0
    return Image.fromarray(array)


def _palette_with_transparency() -> Image.Image:
    image = Image.new("P", (4, 4), 0)
    image.putpalette([255, 0, 0] + [0, 0, 255] * 255)
    image.info["transparency"] = 0
    return image


def test_modes_become_rgb_with_sensible_pixels() -> None:
    transparent = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    assert to_rgb(transparent).getpixel((0, 0)) == (255, 255, 255)  # composited on white
    half = Image.new("LA", (4, 4), (0, 128))
    assert to_rgb(half).getpixel((0, 0))[0] in range(125, 131)
    sixteen = to_rgb(_sixteen_bit())
    assert sixteen.mode == "RGB"
    assert sixteen.getpixel((1, 1)) == (255, 255, 255)  # scaled, not clipped to garbage
    assert sixteen.getpixel((0, 0)) == (0, 0, 0)
    floats = to_rgb(Image.fromarray(np.full((3, 3), 0.5, dtype=np.float32)))
    assert floats.getpixel((0, 0)) == (128, 128, 128)
    assert to_rgb(_palette_with_transparency()).getpixel((0, 0)) == (255, 255, 255)
    cmyk = to_rgb(Image.new("CMYK", (4, 4), (0, 255, 255, 0)))
    assert cmyk.getpixel((0, 0)) == (255, 0, 0)
    assert to_rgb(Image.new("1", (4, 4), 1)).getpixel((0, 0)) == (255, 255, 255)


@pytest.mark.parametrize(
    ("image", "fmt"),
    [
        (Image.new("RGBA", (7, 5), (0, 255, 0, 255)), "PNG"),
        (Image.new("L", (7, 5), 80), "PNG"),
        (Image.new("P", (7, 5), 3), "GIF"),
        (_sixteen_bit(), "PNG"),
        (Image.new("CMYK", (7, 5), (10, 20, 30, 40)), "JPEG"),
        (Image.new("RGB", (7, 5), (1, 2, 3)), "BMP"),
    ],
)
def test_decode_every_mode_to_rgb(image: Image.Image, fmt: str) -> None:
    decoded = decode_image(_encode(image, fmt))
    assert decoded.mode == "RGB"
    assert decoded.size == image.size


def test_not_an_image() -> None:
    with pytest.raises(InvalidImageError, match="not a recognisable image"):
        decode_image(b"hello, this is text")
    with pytest.raises(InvalidImageError, match="empty"):
        decode_image(b"")
    truncated = _encode(Image.effect_noise((64, 64), 50).convert("RGB"))[:200]
    with pytest.raises(InvalidImageError):
        decode_image(truncated)


def test_refused_format() -> None:
    icon = _encode(Image.new("RGB", (16, 16), (5, 5, 5)), "ICO")
    with pytest.raises(UnsupportedImageTypeError, match="ICO"):
        decode_image(icon)


def test_too_many_pixels() -> None:
    data = _encode(Image.new("RGB", (100, 100)))
    with pytest.raises(ImageTooLargeError, match="10000 pixels"):
        decode_image(data, max_pixels=9999)
    assert decode_image(data, max_pixels=10000).size == (100, 100)


def test_mixed_sizes_and_modes_encode_together(backend: ClipBackend) -> None:
    images = [
        Image.new("RGBA", (50, 30), (200, 0, 0, 128)),
        Image.new("L", (20, 70), 100),
        Image.new("P", (33, 33), 7),
        _sixteen_bit(),
        Image.new("CMYK", (64, 64), (0, 0, 0, 0)),
    ]
    features = backend.encode_images(images)
    assert features.shape == (5, backend.embed_dim)
    assert features.dtype == features.new_zeros(()).float().dtype
    assert np.allclose(features.norm(dim=-1).numpy(), 1.0, atol=1e-5)
