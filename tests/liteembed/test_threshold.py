"""Plain words' acceptance thresholds: the model's, raised to each word's own noise ceiling."""

from __future__ import annotations

import math

import pytest
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


def test_the_noise_gate_takes_fresh_noise_and_leaves_real_images() -> None:
    """On liteembed-mini-v2 with its shipped bank: the gate is the bank's most noise-like real
    image; renders of the world's classes lie below it, fresh noise of other seeds and sizes
    above it."""
    from liteembed import find_bank, load_backend
    from liteembed.threshold import noise_gate, noise_images, noise_likeness
    from testbed import default_world

    backend = load_backend("liteembed-mini-v2", "default", device="cpu")
    bank = find_bank(backend)
    assert bank is not None
    noise = noise_features(backend)
    gate = noise_gate(bank.features, noise)
    assert gate == pytest.approx(float(noise_likeness(bank.features, noise).max()))
    world = default_world()
    names = [c.name for c in world.split("test_heldout")]
    real = backend.encode_images(world.render(names, n=5, seed=77))
    assert torch.all(noise_likeness(real, noise) <= gate)
    for side in (32, 64, backend.decode_side):
        fresh = backend.encode_images(noise_images(side, 16, seed=side + 5))
        assert torch.all(noise_likeness(fresh, noise) > gate), side
    assert math.isnan(noise_gate(torch.zeros(0, noise.shape[1]), noise))
