"""When an image is none of the classes: an acceptance threshold on raw cosine similarity.

A softmax over the classes always names one of them, noise included. Each learned class gets a
threshold between what its own unseen images score (the held-out similarities of the step search:
each support image scored by the word learned without it) and what images of other things score
(images of its nearest vocabulary words and registered classes, the user's "not this" images, and
synthetic noise):

    threshold = mean(positives) - beta * (mean(positives) - q90(negatives))

beta = 0 accepts only images as similar as the class's own; beta = 1 accepts anything above the
top decile of the negatives. A model-level offset (`threshold_offset`, chosen on validation) is
subtracted, and the result is never below the highest similarity of a noise image: an image
accepted as a class is at least more like it than noise is. Plain words get one threshold per
model, the same rule applied to the reference bank's images of each word (`liteembed.bank`),
raised for each word to its own noise ceiling.

Noise has one more check, by image rather than by class: an image nearer to a noise image than
any of the reference bank's real images is (`noise_gate`) is accepted as nothing.
"""

from __future__ import annotations

import math
import weakref
from typing import Any

import torch
from PIL import Image

from liteembed.backend import ClipBackend
from liteembed.config import OptimizationConfig

# Noise images drawn for the negatives of every threshold (fixed, so a class's threshold does not
# depend on when it was learned).
NOISE_SEED = 1234
NOISE_IMAGES = 32
# Per loaded model: the noise images' features (the images never change).
_NOISE_FEATURES: weakref.WeakKeyDictionary[ClipBackend, torch.Tensor] = weakref.WeakKeyDictionary()


def noise_images(side: int, count: int = NOISE_IMAGES, seed: int = NOISE_SEED) -> list[Image.Image]:
    """Images of nothing: half uniform pixel noise, half smooth (low-frequency) colour noise."""
    generator = torch.Generator().manual_seed(seed)
    images = []
    for index in range(count):
        if index % 2 == 0:
            pixels = torch.randint(0, 256, (side, side, 3), generator=generator, dtype=torch.uint8)
        else:
            coarse = torch.rand(1, 3, 4, 4, generator=generator)
            smooth = torch.nn.functional.interpolate(coarse, size=(side, side), mode="bilinear")
            pixels = (smooth[0].permute(1, 2, 0) * 255).round().to(torch.uint8)
        images.append(Image.fromarray(pixels.numpy(), mode="RGB"))
    return images


def noise_features(backend: ClipBackend) -> torch.Tensor:
    """(NOISE_IMAGES, E) image features of the noise images, encoded once per backend."""
    cached = _NOISE_FEATURES.get(backend)
    if cached is None:
        cached = backend.encode_images(noise_images(backend.decode_side)).float()
        _NOISE_FEATURES[backend] = cached
    return cached


def noise_ceiling(similarities: torch.Tensor) -> float:
    """The highest similarity of a noise image (-1 without any)."""
    return float(similarities.max()) if similarities.numel() else -1.0


def word_thresholds(words: torch.Tensor, noise: torch.Tensor, default: float) -> torch.Tensor:
    """(W,) acceptance thresholds of plain words (rows of `words`): the model's plain-word
    threshold, raised for a word to the highest similarity of any noise image to it. A word
    that lies close to noise (a texture, a plain colour) would otherwise accept noise. With no
    model threshold (NaN), the noise ceilings alone; without noise, the model's threshold."""
    if not noise.numel():
        return torch.full((words.shape[0],), default)
    with torch.no_grad():
        ceilings = (noise.float() @ words.float().T).max(dim=0).values.cpu()
    return ceilings if math.isnan(default) else torch.clamp(ceilings, min=default)


def noise_likeness(features: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """(N,) each image's similarity to its nearest noise image (-1 without noise)."""
    if not noise.numel() or not features.numel():
        return torch.full((features.shape[0],), -1.0)
    with torch.no_grad():
        return (features.float() @ noise.float().T).max(dim=1).values.cpu()


def noise_gate(real: torch.Tensor, noise: torch.Tensor) -> float:
    """The highest noise-likeness of any real image (the reference bank's): an image more like a
    noise image than every real image is, is taken for noise and accepted as no class, whatever
    its similarity to a word (a word's threshold alone lets the noise distribution's far tail
    through). NaN without real images: no gate."""
    if not real.numel():
        return math.nan
    return float(noise_likeness(real, noise).max())


def acceptance_threshold(positives: torch.Tensor, negatives: torch.Tensor, beta: float) -> float:
    """The rule of the module docstring; without positives, the top of the negatives."""
    top_negative = float(torch.quantile(negatives.float(), 0.9)) if negatives.numel() else -1.0
    if not positives.numel():
        return top_negative
    mean = float(positives.float().mean())
    return mean - beta * (mean - top_negative)


def class_threshold(
    *,
    text: torch.Tensor,
    originals: torch.Tensor,
    evidence: torch.Tensor,
    held_out: torch.Tensor | None,
    noise: torch.Tensor,
    config: OptimizationConfig,
) -> tuple[float, dict[str, Any]]:
    """A learned class's acceptance threshold and what it rests on: its held-out similarities
    (its own images' in-sample ones when it held nothing out, which run higher) against its
    evidence images and the noise images, less the model's offset, never below the noise."""
    with torch.no_grad():
        source = "held-out"
        positives = held_out
        if positives is None or not positives.numel():
            positives = (originals @ text).cpu()
            source = "in-sample"
        negatives = torch.cat([evidence @ text, noise @ text]).cpu()
        noise_floor = noise_ceiling(noise @ text)
    beta = config.threshold_beta
    rule = acceptance_threshold(positives, negatives, beta) - config.threshold_offset
    threshold = max(rule, noise_floor)
    return threshold, {
        "noise_floor": round(noise_floor, 6),
        "value": round(threshold, 6),
        "positives": source,
        "positive_mean": round(float(positives.mean()), 6),
        "negatives": int(negatives.numel()),
        "beta": beta,
        "offset": config.threshold_offset,
    }


__all__ = [
    "NOISE_IMAGES",
    "class_threshold",
    "noise_ceiling",
    "acceptance_threshold",
    "noise_features",
    "noise_gate",
    "noise_images",
    "noise_likeness",
    "word_thresholds",
]
