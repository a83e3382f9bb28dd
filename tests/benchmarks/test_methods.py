"""Tip-Adapter and the linear probe on hand-made features."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from benchmarks.methods import linear_probe_logits, tip_adapter_logits


def test_tip_adapter_without_cache_weight_is_zero_shot() -> None:
    features = F.normalize(torch.randn(5, 8), dim=-1)
    text = F.normalize(torch.randn(3, 8), dim=-1)
    keys = F.normalize(torch.randn(6, 8), dim=-1)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    logits = tip_adapter_logits(features, text, keys, labels, 3, alpha=0.0)
    assert torch.allclose(logits, 100.0 * features @ text.T)


def test_tip_adapter_cache_term_matches_the_formula() -> None:
    features = torch.tensor([[1.0, 0.0]])
    text = torch.zeros(2, 2)  # no zero-shot signal: only the cache speaks
    keys = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    labels = torch.tensor([1, 0])
    logits = tip_adapter_logits(features, text, keys, labels, 2, alpha=1.0, beta=5.5)
    # class 1's key is the image itself (affinity 1 -> exp(0) = 1); class 0's is orthogonal
    assert logits[0, 1].item() == pytest.approx(1.0)
    assert logits[0, 0].item() == pytest.approx(torch.exp(torch.tensor(-5.5)).item())


def test_tip_adapter_cache_fixes_a_wrong_zero_shot_prediction() -> None:
    features = F.normalize(torch.tensor([[1.0, 0.2]]), dim=-1)
    text = F.normalize(torch.tensor([[1.0, 0.21], [1.0, 0.19]]), dim=-1)  # nearly a tie
    keys = features.clone()
    logits = tip_adapter_logits(features, text, keys, torch.tensor([1]), 2)
    assert logits.argmax().item() == 1


def test_linear_probe_separates_clusters() -> None:
    generator = torch.Generator().manual_seed(0)
    centres = torch.eye(4, 16) * 3
    x = torch.cat([c + 0.3 * torch.randn(4, 16, generator=generator) for c in centres])
    y = torch.arange(4).repeat_interleave(4)
    test = torch.cat([c + 0.3 * torch.randn(5, 16, generator=generator) for c in centres])
    logits = linear_probe_logits(x, y, test, num_classes=6)
    assert logits.shape == (20, 6)
    assert (logits.argmax(dim=1) == torch.arange(4).repeat_interleave(5)).all()
    assert torch.isinf(logits[:, 4:]).all()  # classes without training data never win
