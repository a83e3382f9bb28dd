"""The views a class is learned from: each image decoded once, then mirrored and randomly cropped,
and the views encoded in chunks so only their features are held."""

from __future__ import annotations

import math

import torch
from PIL import Image

from liteembed.backend import ClipBackend
from liteembed.config import OptimizationConfig
from liteembed.images import decode_image, to_rgb
from liteembed.requests import ImageData
from liteembed.view_cache import view_cache


def as_rgb(image: ImageData, min_side: int | None = None) -> Image.Image:
    """A caller's image (PIL image or encoded bytes) as an RGB PIL image; encoded bytes are
    decoded reduced to `min_side` (see `decode_image`)."""
    if isinstance(image, bytes | bytearray | memoryview):
        return decode_image(bytes(image), min_side=min_side)
    return to_rgb(image)


def augment_image(
    image: Image.Image, config: OptimizationConfig, generator: torch.Generator
) -> list[Image.Image]:
    """One image and its `augment_views` extra views (random crops drawn from `generator`)."""
    views = [image]
    for view in range(config.augment_views):
        if view == 0:
            views.append(image.transpose(Image.Transpose.FLIP_LEFT_RIGHT))
        else:
            views.append(_random_crop(image, config.augment_min_scale, generator))
    return views


def first_views(groups: list[int], device: torch.device) -> torch.Tensor:
    """Positions of the un-augmented view of every image (the first view of each group)."""
    seen: set[int] = set()
    positions = []
    for position, group in enumerate(groups):
        if group not in seen:
            seen.add(group)
            positions.append(position)
    return torch.tensor(positions, device=device)


class ViewEncoder:
    """Preprocesses views as they come and encodes them every `CHUNK`, so only features (and
    one chunk of pixel tensors) are held, however many views a batch of classes has; views the
    model encoded before come from its cache (liteembed.view_cache).

    The views of one image are added together, the image as it is first: that one is encoded at
    the model's precision (its feature is kept as the class's exemplar and sets its threshold),
    the augmented views after it at `dtype` (None: the model's too)."""

    CHUNK = 64

    def __init__(self, backend: ClipBackend, dtype: torch.dtype | None = None) -> None:
        self._backend = backend
        self._dtype = None if dtype == backend.dtype else dtype
        self._pending: list[torch.Tensor] = []
        self._features: list[torch.Tensor] = []

    def add(self, views: list[Image.Image]) -> None:
        self._pending.append(self._backend.preprocess_images(views))
        if sum(len(p) for p in self._pending) >= self.CHUNK:
            self._flush()

    def _flush(self) -> None:
        if not self._pending:
            return
        pixels = torch.cat(self._pending)
        cache = view_cache(self._backend)
        if self._dtype is None:
            self._features.append(cache.encode(self._backend, pixels))
        else:
            original = torch.zeros(len(pixels), dtype=torch.bool)
            original[torch.tensor([0, *(len(p) for p in self._pending[:-1])]).cumsum(0)] = True
            firsts = cache.encode(self._backend, pixels[original])
            features = torch.empty(len(pixels), firsts.shape[1], dtype=firsts.dtype)
            features[original] = firsts
            if (~original).any():
                features[~original] = cache.encode(self._backend, pixels[~original], self._dtype)
            self._features.append(features)
        self._pending = []

    def features(self) -> torch.Tensor:
        self._flush()
        return torch.cat(self._features)


def _random_crop(image: Image.Image, min_scale: float, generator: torch.Generator) -> Image.Image:
    width, height = image.size
    draws = torch.rand(3, generator=generator).tolist()
    side = math.sqrt(min_scale + (1 - min_scale) * draws[0])  # area fraction -> side fraction
    crop_w, crop_h = max(1, round(width * side)), max(1, round(height * side))
    left = round((width - crop_w) * draws[1])
    top = round((height - crop_h) * draws[2])
    return image.crop((left, top, left + crop_w, top + crop_h)).resize((width, height))


__all__ = ["ViewEncoder", "as_rgb", "augment_image", "first_views"]
