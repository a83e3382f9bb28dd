"""Each loss term on hand-made features, where the right value can be worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from liteembed import OptimizationConfig
from liteembed.losses import LossInputs, alignment, class_loss, coarse, fine


def _inputs(**changes: object) -> LossInputs:
    eye = torch.eye(4)
    values: dict[str, object] = {
        "text": eye[0],
        "exemplars": eye[:1],
        "negatives": eye[1:2],
        "anchor": eye[0],
        "feature_mean": torch.zeros(4),
        "feature_basis": eye,  # coarse = first k axes, fine = the rest
        "k": 2,
        "scale": 2.0,
    }
    values.update(changes)
    return LossInputs(**values)  # type: ignore[arg-type]


def test_alignment_is_cross_entropy_over_word_and_negatives() -> None:
    loss, margins = alignment(_inputs())
    # logits: word 2 * 1, negative 2 * 0 -> -log(e^2 / (e^2 + 1))
    assert loss.item() == pytest.approx(math.log1p(math.exp(-2.0)), rel=1e-5)
    assert margins.tolist() == [1.0]
    # The word points away from the exemplar, the negative onto it.
    wrong, margins = alignment(_inputs(text=torch.eye(4)[1], negatives=torch.eye(4)[:1]))
    assert wrong.item() == pytest.approx(math.log1p(math.exp(2.0)), rel=1e-5)
    assert margins.tolist() == [-1.0]


def test_alignment_without_negatives_pulls_the_cosine_up() -> None:
    loss, margins = alignment(_inputs(negatives=torch.empty(0, 4)))
    assert loss.item() == pytest.approx(0.0)
    half = F.normalize(torch.tensor([1.0, 1.0, 0.0, 0.0]), dim=0)
    loss, margins = alignment(_inputs(negatives=torch.empty(0, 4), text=half))
    assert loss.item() == pytest.approx(1 - half[0].item())
    assert margins.tolist() == pytest.approx([half[0].item()])


def test_coarse_compares_only_the_coarse_projection() -> None:
    same = coarse(_inputs(anchor=torch.tensor([1.0, 0.0, 0.0, 0.0])))
    assert same is not None and same.item() == pytest.approx(0.0, abs=1e-6)
    # The anchor differs from the word only in the fine axes: no coarse penalty.
    fine_only = coarse(_inputs(anchor=F.normalize(torch.tensor([1.0, 0.0, 5.0, 5.0]), dim=0)))
    assert fine_only is not None and fine_only.item() == pytest.approx(0.0, abs=1e-6)
    orthogonal = coarse(_inputs(anchor=torch.tensor([0.0, 1.0, 0.0, 0.0])))
    assert orthogonal is not None and orthogonal.item() == pytest.approx(1.0)
    assert coarse(_inputs(anchor=None)) is None
    assert coarse(_inputs(k=0)) is None


def test_fine_penalises_fine_cosines_above_the_margin() -> None:
    word = F.normalize(torch.tensor([1.0, 0.0, 1.0, 0.0]), dim=0)
    close = torch.tensor([[0.0, 1.0, 1.0, 0.0]])  # fine part identical to the word's
    far = torch.tensor([[0.0, 1.0, 0.0, 1.0]])  # fine part orthogonal
    both = torch.cat([close, far])
    value = fine(_inputs(text=word, negatives=both), margin=0.3)
    assert value is not None and value.item() == pytest.approx((0.7 + 0.0) / 2)
    soft = fine(_inputs(text=word, negatives=far), margin=0.3, kind="softplus", temperature=0.1)
    assert soft is not None and soft.item() == pytest.approx(0.1 * math.log1p(math.exp(-3.0)))
    assert fine(_inputs(negatives=torch.empty(0, 4)), margin=0.3) is None
    assert fine(_inputs(k=4), margin=0.3) is None  # no fine subspace left


def test_class_loss_is_the_weighted_sum_of_the_switched_on_terms() -> None:
    inputs = _inputs(
        text=F.normalize(torch.tensor([1.0, 0.5, 1.0, 0.0]), dim=0),
        negatives=torch.tensor([[0.0, 1.0, 1.0, 0.0]]),
        anchor=torch.tensor([0.0, 1.0, 0.0, 0.0]),
    )
    config = OptimizationConfig(lambda_c=2.0, lambda_f=3.0, fine_margin=0.1)
    total, margins = class_loss(inputs, config)
    align, expected_margins = alignment(inputs)
    coarse_term, fine_term = coarse(inputs), fine(inputs, margin=0.1)
    assert coarse_term is not None and fine_term is not None
    assert total.item() == pytest.approx((align + 2 * coarse_term + 3 * fine_term).item())
    assert torch.equal(margins, expected_margins)
    off, _ = class_loss(inputs, config.with_(lambda_c=0.0, lambda_f=0.0))
    assert off.item() == pytest.approx(align.item())
