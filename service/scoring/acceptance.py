"""Whether a prediction is accepted: its raw cosine at or above its class's threshold, and for a
registered class, no known concept nearer to the image.

A softmax over the tenant's classes always names one of them, whatever the image; the threshold
is what says "none of these". A class without a threshold of its own (registered before classes
had one, or written by a tool) and a plain-word label use the model's plain-word threshold
(`Runtime.word_threshold`); where even that is unknown (NaN), every prediction is accepted.
An image the noise gate takes for noise is accepted as no class at all. A registered class's
prediction is also not accepted when one of the reference bank's words (a concept the model
knows) is nearer to the image by more than the background margin (`liteembed.background`): the
image is more likely that concept than the class.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from liteembed.background import beaten, recorded_margin, rival
from liteembed.threshold import noise_likeness
from service.core.config import Settings
from service.runtime import Runtime


def accepted(
    similarities: np.ndarray, thresholds: np.ndarray, default: float, *, noise: bool = False
) -> list[bool]:
    """For each prediction, `similarity >= threshold` (NaN thresholds: `default`); none for an
    image taken for noise."""
    if noise:
        return [False] * len(similarities)
    limits = np.where(np.isnan(thresholds), default, thresholds)
    return [bool(ok) for ok in (np.isnan(limits) | (similarities >= limits))]


def looks_like_noise(feature: np.ndarray, runtime: Runtime) -> bool:
    """The engine's noise gate on one image: nearer to a noise image than any of the reference
    bank's real images is (`liteembed.threshold.noise_gate`; no bank, no gate)."""
    if np.isnan(runtime.noise_gate):
        return False
    likeness = noise_likeness(torch.from_numpy(feature[None, :]), torch.from_numpy(runtime.noise))
    return float(likeness[0]) > runtime.noise_gate


def background_margin(settings: Settings, model_id: str) -> float:
    """The margin a known concept must be nearer by to beat a class: the operator's, else the
    model's chosen on validation; NaN where the rule is off (switched off, or no margin)."""
    if not settings.background_competitors:
        return math.nan
    if settings.background_margin is not None:
        return settings.background_margin
    margin = recorded_margin(model_id)
    return math.nan if margin is None else margin


def nearer_known(
    feature: np.ndarray,
    labels: Sequence[str],
    similarities: np.ndarray,
    competing: Sequence[bool],
    runtime: Runtime,
    margin: float,
) -> list[str | None]:
    """For each competing prediction (a registered class's, on an image that is not noise), the
    reference bank's word nearer to the image than the class by more than `margin` (a word named
    like the class is not its rival); None for the others (plain-word labels among them) and
    where the rule is off (NaN margin, no bank)."""
    background = runtime.background
    if background is None or not len(background) or math.isnan(margin) or not any(competing):
        return [None] * len(labels)
    words = background.features @ torch.from_numpy(np.asarray(feature, dtype=np.float32))
    found: list[str | None] = []
    for label, similarity, competes in zip(labels, similarities, competing, strict=True):
        index = rival(words, background, label) if competes else -1
        near = index >= 0 and bool(beaten(float(similarity), words[index], margin))
        found.append(background.words[index] if near else None)
    return found
