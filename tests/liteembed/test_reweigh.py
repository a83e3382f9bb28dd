"""The second pass for words that take their neighbours' images (liteembed.reweigh)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pytest
import torch

from liteembed import (
    ClassRequest,
    ClipBackend,
    LearnedClass,
    OptimizationConfig,
    Vocabulary,
    learn_classes,
)
from liteembed.config import from_recorded, recorded_defaults
from liteembed.reweigh import reweigh, takers
from tests.helpers.engine_images import BLUE, GREEN, RED, solid_images


def _learned(name: str, kept: float | None, own: float | None = None) -> LearnedClass:
    diagnostics = {"seconds": 1.0, **({"evidence": {"kept": kept}} if kept is not None else {})}
    if own is not None:
        diagnostics["holdout"] = {"accuracy": own}
    return LearnedClass(
        name=name,
        model_id="m",
        templates=["a photo of a {}."],
        token_embedding=torch.zeros(4),
        text_feature=torch.full((8,), float(len(name))),
        diagnostics=diagnostics,
    )


def test_only_words_keeping_little_evidence_are_learned_again_and_replaced_on_a_clear_gain() -> (
    None
):
    config = OptimizationConfig(
        lambda_img=0.3, reweigh_kept=0.85, reweigh_lambda_img=1.0, reweigh_min_gain=0.04
    )
    first = [_learned("a", 0.5), _learned("bb", 0.99), _learned("ccc", None), _learned("d", 0.8)]
    assert takers(first, config) == [0, 3]
    requests = [ClassRequest(name=c.name, images=[]) for c in first]
    calls: list[tuple[list[str], OptimizationConfig, dict[str, torch.Tensor]]] = []

    def learn_again(
        subset: Sequence[ClassRequest],
        stronger: OptimizationConfig,
        others: Mapping[str, torch.Tensor],
    ) -> list[LearnedClass]:
        calls.append(([r.name for r in subset], stronger, dict(others)))
        # "a" moves well off its neighbours, "d" hardly at all.
        return [_learned("a", 0.9), _learned("d", 0.82)]

    result = reweigh(requests, first, config, learn_again)
    (names, stronger, others), *more = calls
    assert not more and names == ["a", "d"]
    assert stronger.lambda_img == 1.0 and stronger.reweigh_kept == 0.0
    # the batch's other words are the second pass's registered negatives
    assert set(others) == {"bb", "ccc"} and torch.equal(others["bb"], first[1].text_feature)
    assert result[0] is not first[0] and result[0].diagnostics["evidence"]["kept"] == 0.9
    assert result[0].diagnostics["evidence"]["reweigh"] == {
        "kept_before": 0.5,
        "kept_after": 0.9,
        "held_out_accuracy_before": None,
        "held_out_accuracy_after": None,
        "cosine": 1.0,
        "lambda_img": 1.0,
        "replaced": True,
    }
    assert result[0].diagnostics["seconds"] == 2.0
    assert result[3] is first[3]
    assert result[3].diagnostics["evidence"]["reweigh"]["replaced"] is False
    assert result[1] is first[1] and result[2] is first[2]
    assert "reweigh" not in result[1].diagnostics["evidence"]


def test_with_keep_own_a_second_word_that_loses_its_own_held_out_images_is_not_taken() -> None:
    config = OptimizationConfig(lambda_img=0.3, reweigh_kept=0.85, reweigh_keep_own=True)
    first = [_learned("a", 0.5, own=1.0), _learned("b", 0.5, own=0.75)]
    requests = [ClassRequest(name=c.name, images=[]) for c in first]
    # both move well off their neighbours; "a" loses one of its own held-out images doing so
    second = [_learned("a", 0.9, own=0.75), _learned("b", 0.9, own=0.75)]
    result = reweigh(requests, first, config, lambda subset, stronger, others: second)
    assert result[0] is first[0] and result[1] is second[1]
    record = result[0].diagnostics["evidence"]["reweigh"]
    assert record["held_out_accuracy_before"] == 1.0
    assert record["held_out_accuracy_after"] == 0.75 and record["replaced"] is False
    # without the switch the gain in evidence alone decides
    plain = reweigh(requests, first, config.with_(reweigh_keep_own=False), lambda *a: second)
    assert plain[0] is second[0]


def test_with_a_min_cosine_a_second_word_that_moved_far_is_not_taken() -> None:
    config = OptimizationConfig(lambda_img=0.3, reweigh_kept=0.85, reweigh_min_cosine=0.9)
    first = [_learned("a", 0.5), _learned("b", 0.5)]
    requests = [ClassRequest(name=c.name, images=[]) for c in first]
    near, far = _learned("a", 0.9), _learned("b", 0.9)
    # "b" turns away from its first word (cosine -4 / sqrt(8 * 20)): it released its neighbour
    # by leaving.
    far.text_feature[:4] = -2.0
    result = reweigh(requests, first, config, lambda *a: [near, far])
    assert result[0] is near and result[1] is first[1]
    record = result[1].diagnostics["evidence"]["reweigh"]
    assert record["cosine"] == pytest.approx(-4 / (8 * 20) ** 0.5, abs=1e-6)
    assert record["replaced"] is False
    # no limit: the evidence gain alone decides
    plain = reweigh(requests, first, config.with_(reweigh_min_cosine=-1.0), lambda *a: [near, far])
    assert plain[1] is far
    with pytest.raises(ValueError, match="reweigh_min_cosine"):
        OptimizationConfig(reweigh_min_cosine=1.5)


@pytest.mark.parametrize(
    "changes",
    [
        {"lambda_img": 0.0},  # no evidence in the first pass (textual inversion)
        {"reweigh_kept": 0.0},  # switched off
        {"reweigh_lambda_img": 0.3},  # not stronger than the first pass
    ],
)
def test_no_second_pass_without_evidence_when_off_or_not_stronger(changes: dict) -> None:
    config = OptimizationConfig(lambda_img=0.3).with_(**changes)
    assert takers([_learned("a", 0.1)], config) == []


def test_bad_settings_and_configs_saved_before_the_second_pass() -> None:
    with pytest.raises(ValueError, match="reweigh_kept"):
        OptimizationConfig(reweigh_kept=1.5)
    with pytest.raises(ValueError, match="reweigh_lambda_img"):
        OptimizationConfig(reweigh_min_gain=-0.1)
    saved = OptimizationConfig().to_dict()
    for key in ("reweigh_kept", "reweigh_lambda_img", "reweigh_min_gain"):
        del saved[key]
    assert from_recorded(saved).reweigh_kept == 0.0
    # saved with the second pass but before its nearness limit: no limit
    saved = OptimizationConfig(reweigh_kept=0.85).to_dict()
    del saved["reweigh_min_cosine"]
    assert from_recorded(saved).reweigh_min_cosine == -1.0
    # on where validation chose it: the mini CLIP v2's recorded defaults
    chosen = recorded_defaults("liteembed-mini-v2@a03cbbb3c42e")
    assert chosen is not None and (chosen.reweigh_kept, chosen.reweigh_min_cosine) == (0.85, 0.9)
    assert OptimizationConfig().reweigh_kept == 0.0
    assert from_recorded(OptimizationConfig().to_dict()) == OptimizationConfig()


def test_a_word_that_takes_its_negative_images_is_learned_again_in_the_engine(
    backend: ClipBackend, vocabulary: Vocabulary
) -> None:
    """Red images with red-ish "not this" images: the first word takes some of them, so with a
    threshold of 1 (every word with evidence) the engine runs the second pass and records it."""
    reds = solid_images(RED)
    near_red = solid_images((200, 60, 40))
    config = OptimizationConfig(
        steps=4,
        max_steps=4,
        lambda_img=0.3,
        reweigh_kept=1.0,
        reweigh_lambda_img=3.0,
        reweigh_min_gain=0.0,
    )
    requests = [
        ClassRequest(name="redthing", images=reds, negative_images=near_red),
        ClassRequest(name="bluething", images=solid_images(BLUE)),
        ClassRequest(name="greenthing", images=solid_images(GREEN)),
    ]
    learned = learn_classes(backend, vocabulary, requests, config=config, seed=0)
    record = learned[0].diagnostics["evidence"]["reweigh"]
    assert record["lambda_img"] == 3.0 and record["kept_before"] < 1.0
    assert record["replaced"] == (record["kept_after"] - record["kept_before"] >= 0.0)
    assert [c.name for c in learned] == ["redthing", "bluething", "greenthing"]
    # each class's own held-out images at the chosen step, what reweigh_keep_own compares
    own = learned[1].diagnostics["holdout"]
    assert 0.0 <= own["accuracy"] <= 1.0 and isinstance(own["margin"], float)
    # the same settings with the second pass off give the first pass's word
    first = learn_classes(
        backend, vocabulary, requests, config=config.with_(reweigh_kept=0.0), seed=0
    )
    assert "reweigh" not in first[0].diagnostics.get("evidence", {})
    if not record["replaced"]:
        assert torch.equal(first[0].text_feature, learned[0].text_feature)
