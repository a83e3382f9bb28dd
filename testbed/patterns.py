"""Four visually distinct sets of images for a first-use check on any model (the random-weight
tiny one included): concentric rings, diagonal stripes, and two crops of one natural-looking
synthetic photo. Each exemplar differs (position, phase, colour jitter, crop offset, noise), and
every call is deterministic for its seed.

    from testbed.patterns import PATTERN_SETS, pattern_images
    images = pattern_images("rings", 5, seed=0)      # five PIL RGB images
"""

from __future__ import annotations

import numpy as np
from PIL import Image

SIDE = 64
# The four sets, in the order a user registers them.
PATTERN_SETS = ("rings", "stripes", "photo top-left", "photo bottom-right")
_PHOTO_SIDE = 256
_PHOTO_SEED = 2024


def pattern_images(kind: str, count: int, *, seed: int = 0) -> list[Image.Image]:
    """`count` images of the set `kind` (one of PATTERN_SETS)."""
    rng = np.random.default_rng([seed, PATTERN_SETS.index(kind)])
    return [_to_image(_render(kind, rng)) for _ in range(count)]


def _render(kind: str, rng: np.random.Generator) -> np.ndarray:
    if kind == "rings":
        pixels = _rings(rng)
    elif kind == "stripes":
        pixels = _stripes(rng)
    else:
        pixels = _photo_crop(rng, top_left=kind == "photo top-left")
    return pixels + rng.normal(0, 0.03, pixels.shape)


def _grid() -> tuple[np.ndarray, np.ndarray]:
    axis = np.arange(SIDE, dtype=np.float64)
    return np.meshgrid(axis, axis, indexing="xy")


def _rings(rng: np.random.Generator) -> np.ndarray:
    x, y = _grid()
    cx, cy = rng.uniform(SIDE * 0.35, SIDE * 0.65, size=2)
    radius = np.hypot(x - cx, y - cy)
    period = rng.uniform(7, 10)
    wave = 0.5 + 0.5 * np.sign(np.sin(2 * np.pi * radius / period))
    ink = np.array([0.9, 0.25, 0.1]) + rng.normal(0, 0.05, 3)
    paper = np.array([0.95, 0.92, 0.8]) + rng.normal(0, 0.03, 3)
    return wave[..., None] * ink + (1 - wave[..., None]) * paper


def _stripes(rng: np.random.Generator) -> np.ndarray:
    x, y = _grid()
    angle = np.pi / 4 + rng.normal(0, 0.1)
    period = rng.uniform(8, 12)
    phase = rng.uniform(0, period)
    along = x * np.cos(angle) + y * np.sin(angle)
    wave = 0.5 + 0.5 * np.sign(np.sin(2 * np.pi * (along + phase) / period))
    ink = np.array([0.1, 0.2, 0.75]) + rng.normal(0, 0.05, 3)
    paper = np.array([0.85, 0.9, 0.95]) + rng.normal(0, 0.03, 3)
    return wave[..., None] * ink + (1 - wave[..., None]) * paper


def _photo() -> np.ndarray:
    """One fixed 256 px "photo": a sky-to-ground gradient, soft blobs of colour, fine texture."""
    rng = np.random.default_rng(_PHOTO_SEED)
    axis = np.linspace(0, 1, _PHOTO_SIDE)
    x, y = np.meshgrid(axis, axis, indexing="xy")
    sky = np.array([0.45, 0.65, 0.9])
    ground = np.array([0.35, 0.5, 0.2])
    image = (1 - y[..., None]) * sky + y[..., None] * ground
    for _ in range(24):
        cx, cy = rng.uniform(0, 1, 2)
        size = rng.uniform(0.03, 0.15)
        colour = rng.uniform(0, 1, 3)
        weight = np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * size**2))[..., None]
        image = image * (1 - 0.8 * weight) + colour * 0.8 * weight
    texture = rng.normal(0, 1, (_PHOTO_SIDE // 4, _PHOTO_SIDE // 4))
    texture = np.kron(texture, np.ones((4, 4)))
    return image + 0.04 * texture[..., None]


_PHOTO = _photo()


def _photo_crop(rng: np.random.Generator, *, top_left: bool) -> np.ndarray:
    """A 96 px crop around one corner of the photo (jittered), reduced to SIDE."""
    crop = 96
    base = 16 if top_left else _PHOTO_SIDE - crop - 16
    dx, dy = rng.integers(-12, 13, size=2)
    top, left = (
        int(np.clip(base + dy, 0, _PHOTO_SIDE - crop)),
        int(np.clip(base + dx, 0, _PHOTO_SIDE - crop)),
    )
    region = _PHOTO[top : top + crop, left : left + crop]
    image = Image.fromarray(_as_bytes(region)).resize((SIDE, SIDE), Image.BILINEAR)
    return np.asarray(image, dtype=np.float64) / 255.0


def _as_bytes(pixels: np.ndarray) -> np.ndarray:
    return (np.clip(pixels, 0, 1) * 255).round().astype(np.uint8)


def _to_image(pixels: np.ndarray) -> Image.Image:
    return Image.fromarray(_as_bytes(pixels), "RGB")
