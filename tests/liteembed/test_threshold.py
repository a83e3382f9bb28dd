"""Plain words' acceptance thresholds: the model's, raised to each word's own noise ceiling."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from liteembed import ClipBackend, Vocabulary
from liteembed.threshold import noise_features, word_thresholds


def test_a_word_close_to_noise_gets_the_noise_ceiling_as_its_threshold(
    backend: ClipBackend, vocabulary: Vocabulary
) -> None:
    noise = noise_features(backend)
    words = vocabulary.word_features[:50].float()
    ceilings = (noise @ words.T).max(dim=0).values
    default = float(ceilings.median())
    limits = word_thresholds(words, noise, default)
    assert limits.shape == (50,)
    raised = ceilings > default
    assert raised.any() and (~raised).any()
    assert torch.allclose(limits[raised], ceilings[raised])
    assert torch.all(limits[~raised] == default)
    # No noise image is accepted as a word it was scored against.
    assert torch.all((noise @ words.T) <= limits[None, :] + 1e-6)


def test_without_a_model_threshold_the_ceilings_alone_and_without_noise_the_default() -> None:
    words = F.normalize(torch.randn(3, 8, generator=torch.Generator().manual_seed(0)), dim=-1)
    noise = F.normalize(torch.randn(5, 8, generator=torch.Generator().manual_seed(1)), dim=-1)
    ceilings = (noise @ words.T).max(dim=0).values
    assert torch.allclose(word_thresholds(words, noise, math.nan), ceilings)
    assert word_thresholds(words, torch.zeros(0, 8), 0.5).tolist() == [0.5, 0.5, 0.5]
