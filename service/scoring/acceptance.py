"""Whether a prediction is accepted: its raw cosine at or above its class's threshold.

A softmax over the tenant's classes always names one of them, whatever the image; the threshold
is what says "none of these". A class without a threshold of its own (registered before classes
had one, or written by a tool) and a plain-word label use the model's plain-word threshold
(`Runtime.word_threshold`); where even that is unknown (NaN), every prediction is accepted.
An image the noise gate takes for noise is accepted as no class at all.
"""

from __future__ import annotations

import numpy as np
import torch

from liteembed.threshold import noise_likeness
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
