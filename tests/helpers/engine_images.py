"""Images for the engine tests: near-solid colours, distinct even for random weights."""

from __future__ import annotations

from PIL import Image


def solid_images(colour: tuple[int, int, int], count: int = 4, size: int = 40) -> list[Image.Image]:
    """Near-solid images of one colour: clearly distinct classes even for random weights."""
    images = []
    for i in range(count):
        shade = tuple(max(0, min(255, c + 8 * i - 12)) for c in colour)
        image = Image.new("RGB", (size + 4 * i, size), shade)
        # A small patch so the views are not pixel-identical.
        image.paste(tuple(255 - c for c in shade), (2 + i, 2, 6 + i, 6))
        images.append(image)
    return images


RED = (220, 30, 30)
BLUE = (30, 30, 220)
GREEN = (30, 200, 40)
