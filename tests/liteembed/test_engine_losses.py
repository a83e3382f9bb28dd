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


def _evidence_inputs() -> LossInputs:
    """Two evidence images: one of a class with its own word, one "not this" image without."""
    eye = torch.eye(4)
    return _inputs(
        evidence=torch.stack([eye[2], eye[3]]),
        evidence_own=torch.stack([eye[2], torch.zeros(4)]),
        evidence_has_own=torch.tensor([True, False]),
    )


def test_evidence_is_minus_log_of_the_word_losing_each_image() -> None:
    from liteembed.losses import evidence

    term = evidence(_evidence_inputs())
    assert term is not None
    # Image 0: word 0, own word 2 * 1, negative 0 -> -log(1 - 1 / (1 + e^2 + 1)).
    first = -math.log(1 - 1 / (2 + math.exp(2.0)))
    # Image 1: word 0, negative 0 (no own word) -> -log(1 - 1/2).
    second = math.log(2.0)
    assert term.item() == pytest.approx((first + second) / 2, rel=1e-5)
    # A margin makes the word count `margin` higher: the word must lose by that much.
    with_margin = evidence(_evidence_inputs(), margin=0.5)
    assert with_margin is not None
    shifted_first = -math.log(1 - math.exp(1.0) / (math.exp(1.0) + math.exp(2.0) + 1))
    shifted_second = -math.log(1 - math.exp(1.0) / (math.exp(1.0) + 1))
    assert with_margin.item() == pytest.approx((shifted_first + shifted_second) / 2, rel=1e-5)
    # The "not this" image weighs 3 against the other's 1.
    weighted = evidence(_evidence_inputs(), user_weight=3.0)
    assert weighted is not None
    assert weighted.item() == pytest.approx((first + 3 * second) / 4, rel=1e-5)


def test_class_loss_passes_the_evidence_settings() -> None:
    config = OptimizationConfig(lambda_img=1.0)
    plain, _ = class_loss(_evidence_inputs(), config)
    margin, _ = class_loss(_evidence_inputs(), config.with_(evidence_margin=0.5))
    heavier, _ = class_loss(_evidence_inputs(), config.with_(user_negative_weight=3.0))
    assert margin.item() > plain.item()
    assert heavier.item() != pytest.approx(plain.item())
    with pytest.raises(ValueError, match="evidence_margin"):
        OptimizationConfig(evidence_margin=-0.1)


def test_a_config_saved_before_the_evidence_weights_keeps_their_old_meaning() -> None:
    from liteembed.config import from_recorded

    saved = OptimizationConfig().to_dict()
    assert saved["user_negative_weight"] == 16.0
    for key in ("evidence_margin", "user_negative_weight"):
        del saved[key]
    old = from_recorded(saved)
    assert (old.evidence_margin, old.user_negative_weight) == (0.0, 1.0)
    assert from_recorded(OptimizationConfig().to_dict()).user_negative_weight == 16.0
