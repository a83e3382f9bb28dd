"""Images the service, worker and end-to-end tests upload."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from PIL import Image

# Chosen as the most separable triple for the random-weight tiny model's image encoder.
COLOURS: dict[str, tuple[int, int, int]] = {
    "green": (20, 140, 40),
    "yellow": (240, 220, 30),
    "magenta": (220, 30, 220),
    "blue": (20, 30, 160),
}


def image_bytes(
    colour: tuple[int, int, int], *, seed: int = 0, size: int = 48, fmt: str = "PNG"
) -> bytes:
    """A solid colour with a little noise, so each example differs but stays recognisable."""
    rng = np.random.default_rng(seed)
    pixels = np.clip(
        np.array(colour, dtype=np.float32) + rng.normal(0, 12, (size, size, 3)), 0, 255
    ).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt)
    return buffer.getvalue()


def class_images(colour: str, count: int = 4, *, first_seed: int = 0) -> list[tuple[str, Any]]:
    """The `files=` list for POST /v1/classes."""
    return [
        (
            "images",
            (f"{colour}{i}.png", image_bytes(COLOURS[colour], seed=first_seed + i), "image/png"),
        )
        for i in range(count)
    ]
