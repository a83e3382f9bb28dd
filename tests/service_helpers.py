"""Helpers shared by the service, worker and end-to-end tests.

They live in a module of their own because `from conftest import ...` resolves to whichever
conftest.py pytest imported first (tests/liteembed has one too).
"""

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


def truncate_postgres(url: str) -> None:
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("TRUNCATE class_images, classes, class_removals"))
        conn.execute(text("UPDATE class_generation SET value = 0, removals_floor = 0"))
    engine.dispose()
