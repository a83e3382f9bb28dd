"""Whether a prediction is accepted: its raw cosine at or above its class's threshold.

A softmax over the tenant's classes always names one of them, whatever the image; the threshold
is what says "none of these". A class without a threshold of its own (registered before classes
had one, or written by a tool) and a plain-word label use the model's plain-word threshold
(`Runtime.word_threshold`); where even that is unknown (NaN), every prediction is accepted.
"""

from __future__ import annotations

import numpy as np


def accepted(similarities: np.ndarray, thresholds: np.ndarray, default: float) -> list[bool]:
    """For each prediction, `similarity >= threshold` (NaN thresholds: `default`)."""
    limits = np.where(np.isnan(thresholds), default, thresholds)
    return [bool(ok) for ok in (np.isnan(limits) | (similarities >= limits))]
