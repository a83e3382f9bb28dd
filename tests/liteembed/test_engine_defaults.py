"""The scale-aware defaults: batch negatives, the norm bound, the step size in token units, the
pooled hold-one-out step rule, local subspaces, hidden names and the recorded-defaults warning."""

from __future__ import annotations

import logging

import pytest
import torch

from liteembed import (
    ClassRequest,
    ClipBackend,
    OptimizationConfig,
    Vocabulary,
    learn_classes,
    optimize,
    step_search,
)
from liteembed.config import RECORDED_DEFAULTS, from_recorded, recorded_defaults
from liteembed.problem import local_subspace
from liteembed.scale import word_scale
from tests.helpers.engine_images import BLUE, GREEN, RED, solid_images

REQUESTS = [
    ClassRequest("redthing", solid_images(RED)),
    ClassRequest("bluething", solid_images(BLUE, count=3)),
    ClassRequest("greenthing", solid_images(GREEN, count=2)),
]


def _accuracy_among(backend: ClipBackend, learned: list) -> float:
    """How often a class's own exemplars score highest on its own feature among the batch's."""
    weights = torch.stack([c.text_feature for c in learned])
    hits = total = 0
    for index, request in enumerate(REQUESTS):
        scores = backend.encode_images(request.images) @ weights.T
        hits += int((scores.argmax(dim=1) == index).sum())
        total += len(request.images)
    return hits / total


def test_defaults_batch_negatives_norm_bound_and_pooled_steps(
    backend: ClipBackend, vocabulary: Vocabulary
) -> None:
    learned = learn_classes(backend, vocabulary, REQUESTS)
    scale = word_scale(backend, vocabulary)
    steps = {c.diagnostics["steps_run"] for c in learned}
    assert len(steps) == 1  # one pooled decision for the whole batch
    for c in learned:
        d = c.diagnostics
        peers = [n["name"] for n in d["negatives"] if n["source"] == "batch"]
        assert sorted(peers) == sorted(r.name for r in REQUESTS if r.name != c.name)
        assert d["word_norm"] <= d["norm_cap"] + 1e-5
        assert d["norm_cap"] == pytest.approx(scale.max_norm)
        assert d["lr"] == pytest.approx(OptimizationConfig().lr * scale.coordinate)
        assert d["holdout"]["rule"] == "pooled held-out accuracy"
        pooled = d["holdout"]["pooled_accuracy"]
        assert pooled[d["holdout"]["best_step"]] == max(pooled)
        assert d["steps_run"] == max(d["holdout"]["best_step"], 1)
        assert d["exemplar_accuracy"] == 1.0  # against its mined negatives and its peers
    assert _accuracy_among(backend, learned) == 1.0


def test_final_run_carried_in_the_search_equals_a_run_of_its_own(
    backend: ClipBackend, vocabulary: Vocabulary, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A class of one image holds nothing out; it still gets a carried row of its own.
    requests = [*REQUESTS, ClassRequest("onething", solid_images(RED, count=1))]
    config = OptimizationConfig(max_steps=30)
    events: list[int] = []
    carried = learn_classes(
        backend, vocabulary, requests, config=config, progress=lambda e: events.append(e.total)
    )
    monkeypatch.setattr(optimize, "carry_final", lambda search, batch: search)
    separate = learn_classes(backend, vocabulary, requests, config=config)
    for one, other in zip(carried, separate, strict=True):
        assert (one.token_embedding - other.token_embedding).abs().max().item() < 1e-4
        assert one.threshold == pytest.approx(other.threshold, abs=1e-4)
        for key in ("steps_run", "stop_reason", "exemplar_accuracy"):
            assert one.diagnostics[key] == other.diagnostics[key]
        # Equal up to float rounding (the rows are batched differently).
        for key in ("loss_curve", "holdout"):
            assert one.diagnostics[key] == pytest.approx(other.diagnostics[key], abs=1e-4)
    assert set(events) == {config.max_steps}  # one run: the search is all the steps there are


def test_margin_breaks_ties_of_pooled_accuracy(
    backend: ClipBackend, vocabulary: Vocabulary
) -> None:
    config = OptimizationConfig(holdout_ties="margin")
    learned = learn_classes(backend, vocabulary, REQUESTS, config=config)
    d = learned[0].diagnostics["holdout"]
    accuracy, margin = d["pooled_accuracy"], d["pooled_margin"]
    assert d["ties"] == "margin"
    tied = [s for s, a in enumerate(accuracy) if a == max(accuracy)]
    assert d["best_step"] in tied
    assert margin[d["best_step"]] == max(margin[s] for s in tied)
    config = OptimizationConfig(holdout_ties="earliest")
    earliest = learn_classes(backend, vocabulary, REQUESTS, config=config)[0].diagnostics["holdout"]
    first = earliest["pooled_accuracy"]
    assert earliest["ties"] == "earliest" and earliest["best_step"] == first.index(max(first))
    with pytest.raises(ValueError, match="holdout_ties"):
        OptimizationConfig(holdout_ties="latest")  # type: ignore[arg-type]


def test_folds_hold_out_each_image_in_turn(backend: ClipBackend, vocabulary: Vocabulary) -> None:
    config = OptimizationConfig(holdout_folds=3)
    learned = learn_classes(backend, vocabulary, REQUESTS, config=config)
    for request, c in zip(REQUESTS, learned, strict=True):
        d = c.diagnostics["holdout"]
        held = d["held_out_images"]
        count = len(request.images)
        assert held[0] == d["held_out_image"]
        assert len(held) == len(set(held)) == min(3, count)
        assert c.diagnostics["steps_run"] == max(d["best_step"], 1)
    config = OptimizationConfig(holdout_folds=1)
    one = learn_classes(backend, vocabulary, REQUESTS, config=config)[0].diagnostics["holdout"]
    assert one["held_out_images"] == [one["held_out_image"]]
    # The default holds out two images of each class (level with every image on validation).
    default = learn_classes(backend, vocabulary, REQUESTS)
    for request, c in zip(REQUESTS, default, strict=True):
        assert len(c.diagnostics["holdout"]["held_out_images"]) == min(2, len(request.images))


def test_without_the_bound_the_word_leaves_the_vocabulary_range(
    backend: ClipBackend, vocabulary: Vocabulary
) -> None:
    config = OptimizationConfig(step_rule="fixed", steps=40, lr=0.05, lr_scale="absolute")
    bounded = learn_classes(backend, vocabulary, REQUESTS[:1], config=config)[0]
    free = learn_classes(backend, vocabulary, REQUESTS[:1], config=config.with_(norm_bound=None))
    cap = word_scale(backend, vocabulary).max_norm
    assert free[0].diagnostics["word_norm"] > cap
    assert bounded.diagnostics["word_norm"] <= cap + 1e-5
    half = config.with_(norm_bound=0.5, parameterization="pca")
    boxed = learn_classes(backend, vocabulary, REQUESTS[:1], config=half)[0]
    assert boxed.diagnostics["word_norm"] <= 0.5 * cap + 1e-4


def test_single_shot_classes_share_the_pooled_step_or_fall_back_to_steps(
    backend: ClipBackend, vocabulary: Vocabulary
) -> None:
    one = ClassRequest("onething", solid_images(RED, count=1))
    mixed = learn_classes(backend, vocabulary, [one, REQUESTS[1]])
    assert mixed[0].diagnostics["steps_run"] == mixed[1].diagnostics["steps_run"]
    config = OptimizationConfig(steps=7)
    alone = learn_classes(backend, vocabulary, [one], config=config)[0]
    assert "holdout" not in alone.diagnostics and alone.diagnostics["steps_run"] == 7


def test_hidden_names_are_never_mined(backend: ClipBackend, vocabulary: Vocabulary) -> None:
    config = OptimizationConfig(step_rule="fixed", steps=1, m=20)
    mined = learn_classes(backend, vocabulary, REQUESTS[:1], config=config)[0]
    words = [n["name"] for n in mined.diagnostics["negatives"] if n["source"] == "vocabulary"]
    hidden = ClassRequest("redthing", solid_images(RED), not_negatives=(words[0], words[3]))
    again = learn_classes(backend, vocabulary, [hidden], config=config)[0]
    remaining = [n["name"] for n in again.diagnostics["negatives"]]
    assert words[0] not in remaining and words[3] not in remaining
    assert words[1] in remaining


def test_local_subspaces(backend: ClipBackend, vocabulary: Vocabulary) -> None:
    points = torch.randn(9, 16, generator=torch.Generator().manual_seed(0))
    mean, basis, k = local_subspace(points, 2)
    assert torch.allclose(mean, points.mean(dim=0))
    assert basis.shape == (16, 8) and k == 2  # 9 centred points span 8 directions
    assert torch.allclose(basis.T @ basis, torch.eye(8), atol=1e-5)
    assert local_subspace(points[:1], 2) is None
    config = OptimizationConfig(subspaces="local", lambda_f=0.5, step_rule="fixed", steps=5)
    learned = learn_classes(backend, vocabulary, REQUESTS[:2], config=config)
    assert all(c.diagnostics["exemplar_accuracy"] == 1.0 for c in learned)


def test_a_model_without_recorded_defaults_warns(
    backend: ClipBackend, vocabulary: Vocabulary, caplog: pytest.LogCaptureFixture
) -> None:
    import liteembed.optimize as optimize

    optimize._WARNED_MODELS.discard(backend.model_id)
    assert recorded_defaults(backend.model_id) is None
    assert recorded_defaults("liteembed-mini-v2@a03cbbb3c42e") == OptimizationConfig(
        **RECORDED_DEFAULTS["liteembed-mini-v2@a03cbbb3c42e"]
    )
    # another checkpoint under the same name was not validated; v1 runs v2's defaults
    assert recorded_defaults("liteembed-mini-v2@abc") is None
    assert recorded_defaults("liteembed-mini@abc") is None
    config = OptimizationConfig(step_rule="fixed", steps=1)
    with caplog.at_level(logging.WARNING, logger="liteembed.optimize"):
        learn_classes(backend, vocabulary, REQUESTS[:1], config=config)
        learn_classes(backend, vocabulary, REQUESTS[:1], config=config)
    warnings = [r for r in caplog.records if "no recorded optimisation defaults" in r.message]
    assert len(warnings) == 1 and backend.model_id in warnings[0].getMessage()


def test_configs_saved_before_the_scale_aware_switches_keep_their_meaning() -> None:
    old = {"steps": 10, "lr": 0.01, "holdout_stopping": True, "unknown": 1}
    config = from_recorded(old)
    assert (config.lr, config.lr_scale, config.step_rule) == (0.01, "absolute", "holdout-margin")
    assert config.norm_bound is None and config.batch_negatives is False
    assert from_recorded(OptimizationConfig().to_dict()) == OptimizationConfig()
    # saved before the tie-break and fold switches: one random image, earliest of ties
    before = {
        k: v for k, v in OptimizationConfig().to_dict().items() if not k.startswith("holdout")
    }
    config = from_recorded(before)
    assert (config.holdout_ties, config.holdout_folds) == ("earliest", 1)
    # saved before the step precision: the model's own
    saved = {k: v for k, v in OptimizationConfig().to_dict().items() if k != "step_precision"}
    assert from_recorded(saved).step_precision == "model"
    # saved before the views' precision: the model's own
    saved = {k: v for k, v in OptimizationConfig().to_dict().items() if k != "view_precision"}
    assert from_recorded(saved).view_precision == "model"
    assert from_recorded(OptimizationConfig(view_precision="auto").to_dict()).view_precision == (
        "auto"
    )


def test_earliest_ties_stop_the_search_at_the_first_perfect_step(
    backend: ClipBackend, vocabulary: Vocabulary, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = OptimizationConfig(holdout_ties="earliest", holdout_folds=1, max_steps=40)
    stopped = learn_classes(backend, vocabulary, REQUESTS, config=config)
    pooled = stopped[0].diagnostics["holdout"]["pooled_accuracy"]
    assert pooled[-1] == 1.0 and max(pooled[:-1]) < 1.0  # ran to the first perfect step only
    monkeypatch.setattr(step_search, "settled", lambda pooled, config: False)
    longer = learn_classes(backend, vocabulary, REQUESTS, config=config)
    assert len(longer[0].diagnostics["holdout"]["pooled_accuracy"]) > len(pooled)
    # Nothing after a perfect step is chosen under earliest ties: the same step, the same words.
    for one, other in zip(stopped, longer, strict=True):
        assert one.diagnostics["steps_run"] == other.diagnostics["steps_run"]
        assert torch.equal(one.token_embedding, other.token_embedding)
        assert one.threshold == other.threshold
