"""The LiteEmbed optimisation on the tiny random model with clearly distinct colour classes."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from liteembed import (
    ClassRequest,
    ClipBackend,
    InvalidImageError,
    InvalidNameError,
    NoImagesError,
    OptimizationCancelled,
    OptimizationConfig,
    ProgressEvent,
    UnknownHintError,
    Vocabulary,
    learn_class,
    learn_classes,
)
from tests.helpers.engine_images import BLUE, GREEN, RED, solid_images

NAME = "redthing"


def _negative_features(backend: ClipBackend, diagnostics: dict) -> torch.Tensor:
    names = [n["name"] for n in diagnostics["negatives"]]
    return backend.encode_texts([f"a photo of a {n}." for n in names])


def _margins(images: torch.Tensor, text: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor:
    return images @ text - (images @ negatives.T).max(dim=1).values


def test_learning_moves_the_word_onto_the_images(
    backend: ClipBackend, vocabulary: Vocabulary
) -> None:
    reds = solid_images(RED)
    learned = learn_class(backend, vocabulary, NAME, reds)
    diagnostics = learned.diagnostics
    exemplars = backend.encode_images(reds)
    negatives = _negative_features(backend, diagnostics)
    assert len(diagnostics["negatives"]) == OptimizationConfig().m
    assert NAME not in [n["name"] for n in diagnostics["negatives"]]
    # Before: the name's own embedding loses to the mined negatives on every exemplar.
    start = backend.token_table[backend.encode_word_tokens(NAME)].mean(dim=0)
    before = backend.encode_with_token(list(learned.templates), start)[0].detach()
    assert torch.all(_margins(exemplars, before, negatives) < 0)
    # After: recomputed here, not taken from the diagnostics.
    assert torch.all(_margins(exemplars, learned.text_feature, negatives) > 0)
    prototype = F.normalize(exemplars.mean(dim=0), dim=-1)
    assert learned.text_feature @ prototype > before @ prototype + 0.2
    assert diagnostics["exemplar_accuracy"] == 1.0
    # Unseen red images score higher than blue ones: it learned the class, not the exemplars.
    unseen_red = backend.encode_images(solid_images(RED, count=3, size=56))
    blue = backend.encode_images(solid_images(BLUE))
    assert (unseen_red @ learned.text_feature).min() > (blue @ learned.text_feature).max()
    assert learned.token_embedding.shape == (backend.token_dim,)
    assert abs(learned.text_feature.norm().item() - 1) < 1e-5
    assert learned.model_id == backend.model_id
    json.dumps(diagnostics)  # stored by the service as JSON


def test_output_feature_is_the_template_mean(backend: ClipBackend, vocabulary: Vocabulary) -> None:
    templates = ("a photo of a {}.", "a {} in the picture")
    config = OptimizationConfig(templates=templates, steps=5, early_stopping=False)
    learned = learn_class(backend, vocabulary, NAME, solid_images(RED), config=config)
    per_template = backend.encode_with_token(list(templates), learned.token_embedding).detach()
    expected = F.normalize(per_template.mean(dim=0), dim=-1)
    assert (learned.text_feature - expected).abs().max().item() < 1e-5
    assert learned.templates == list(templates)


def test_bfloat16_steps_store_the_model_precision_feature(
    backend: ClipBackend, vocabulary: Vocabulary
) -> None:
    config = OptimizationConfig(step_precision="bfloat16", step_rule="fixed", steps=5)
    learned = learn_class(backend, vocabulary, NAME, solid_images(RED), config=config)
    # The stored feature is the float32 model's for the learned word, not the steps' bfloat16.
    expected = backend.encode_with_token(list(learned.templates), learned.token_embedding)
    expected = F.normalize(expected.detach().mean(dim=0), dim=-1)
    assert (learned.text_feature - expected).abs().max().item() < 1e-6
    assert learned.diagnostics["config"]["step_precision"] == "bfloat16"
    assert learned.diagnostics["exemplar_accuracy"] == 1.0


def test_bfloat16_views_learn_the_class_and_store_the_model_precision_feature(
    backend: ClipBackend, vocabulary: Vocabulary
) -> None:
    config = OptimizationConfig(view_precision="bfloat16", step_rule="fixed", steps=5)
    images = solid_images(RED)
    learned = learn_class(backend, vocabulary, NAME, images, config=config)
    plain = learn_class(
        backend, vocabulary, NAME, images, config=config.with_(view_precision="model")
    )
    # The images as they are stay at the model's precision: their features are the class's
    # stored exemplars (and its threshold's held-out similarities); only augmented views round.
    assert learned.exemplar_features is not None
    assert torch.allclose(learned.exemplar_features, backend.encode_images(images), atol=1e-6)
    # The views' rounding moves the word a little, not away from the class.
    assert learned.diagnostics["config"]["view_precision"] == "bfloat16"
    assert learned.diagnostics["exemplar_accuracy"] == 1.0
    assert float(learned.text_feature @ plain.text_feature) > 0.99
    assert not torch.equal(learned.token_embedding, plain.token_embedding)
    expected = backend.encode_with_token(list(learned.templates), learned.token_embedding)
    expected = F.normalize(expected.detach().mean(dim=0), dim=-1)
    assert (learned.text_feature - expected).abs().max().item() < 1e-6


def test_fine_separation_lowers_fine_similarity_to_negatives(
    backend: ClipBackend, vocabulary: Vocabulary
) -> None:
    def fine_similarity(lambda_f: float) -> float:
        # margin -1: the hinge is active for every negative, so its weight is what differs.
        config = OptimizationConfig(
            lambda_c=0.0, lambda_f=lambda_f, fine_margin=-1.0, early_stopping=False, steps=25
        )
        learned = learn_class(backend, vocabulary, NAME, solid_images(RED), config=config)
        basis = vocabulary.feature_basis[:, config.k :]
        mean = vocabulary.feature_mean
        fine_t = (learned.text_feature - mean) @ basis
        fine_z = (_negative_features(backend, learned.diagnostics) - mean) @ basis
        return F.cosine_similarity(fine_t[None], fine_z).mean().item()

    assert fine_similarity(3.0) < fine_similarity(0.0) - 0.05


def test_coarse_alignment_keeps_the_coarse_projection_near_the_anchor(
    backend: ClipBackend, vocabulary: Vocabulary
) -> None:
    reds = solid_images(RED)
    prototype = F.normalize(backend.encode_images(reds).mean(dim=0), dim=-1)
    coarse = vocabulary.feature_basis[:, :4]
    mean = vocabulary.feature_mean
    # The hint whose coarse projection is furthest from the images: the term has work to do.
    scores = ((vocabulary.word_features - mean) @ coarse) @ ((prototype - mean) @ coarse)
    hint = vocabulary.words[int(scores.argmin())]
    anchor = (vocabulary.word_features[vocabulary.index(hint)] - mean) @ coarse

    def coarse_similarity(lambda_c: float) -> float:
        config = OptimizationConfig(
            k=4, lambda_c=lambda_c, lambda_f=0.0, early_stopping=False, steps=25
        )
        learned = learn_class(backend, vocabulary, NAME, reds, hints=[hint], config=config)
        assert learned.diagnostics["anchor_words"] == [hint]
        return F.cosine_similarity((learned.text_feature - mean) @ coarse, anchor, dim=0).item()

    assert coarse_similarity(1.0) > coarse_similarity(0.0) + 0.2


def test_pca_parameterisation_stays_in_the_kappa_box(
    backend: ClipBackend, vocabulary: Vocabulary
) -> None:
    kappa = 0.3  # tight enough that the clamp must bind
    config = OptimizationConfig(parameterization="pca", kappa=kappa, early_stopping=False, steps=20)
    learned = learn_class(backend, vocabulary, NAME, solid_images(RED), config=config)
    coords = (learned.token_embedding - vocabulary.token_mean) @ vocabulary.token_basis
    std = vocabulary.token_std.clone()
    rank = vocabulary.token_rank
    std[rank:] = std[:rank][std[:rank] > 0].min()
    box = kappa * std
    assert torch.all(coords.abs() <= box + 1e-5)
    assert torch.any((coords.abs() - box).abs() < 1e-5)  # at least one coordinate on the wall


def test_pca_span_only_keeps_the_word_in_the_vocabulary_span(
    backend: ClipBackend, vocabulary: Vocabulary
) -> None:
    words = vocabulary.words[:10]
    # A vocabulary spanning few token dimensions, as a small declared word list does.
    rows = backend.token_table[[backend.encode_word_tokens(w)[0] for w in words]]
    mean = rows.mean(dim=0)
    _, _, vh = torch.linalg.svd(rows - mean, full_matrices=False)
    rank = len(words) - 1
    narrow = Vocabulary(
        **{
            **vocabulary.state(),
            "token_mean": mean,
            "token_basis": torch.linalg.qr(
                torch.cat([vh[:rank].T, torch.eye(backend.token_dim)], dim=1)
            )[0][:, : backend.token_dim],
            "token_rank": rank,
            "token_std": torch.cat([torch.ones(rank), torch.zeros(backend.token_dim - rank)]),
        }
    )
    span = narrow.token_basis[:, :rank]
    for full, inside in ((False, True), (True, False)):
        config = OptimizationConfig(
            parameterization="pca", pca_full_basis=full, kappa=100.0, steps=20, early_stopping=False
        )
        learned = learn_class(backend, narrow, NAME, solid_images(RED), config=config)
        offset = learned.token_embedding - mean
        residual = (offset - span @ (span.T @ offset)).norm().item()
        assert (residual < 1e-4) is inside


def test_same_seed_same_embedding(backend: ClipBackend, vocabulary: Vocabulary) -> None:
    config = OptimizationConfig(augment_views=3, steps=15)
    runs = [
        learn_class(backend, vocabulary, NAME, solid_images(RED), config=config, seed=seed)
        for seed in (5, 5, 6)
    ]
    assert torch.equal(runs[0].token_embedding, runs[1].token_embedding)
    assert torch.equal(runs[0].text_feature, runs[1].text_feature)
    assert runs[0].diagnostics["views"] == 4 * 4
    # The seed drives the random crops, so another seed gives another word.
    assert not torch.equal(runs[0].token_embedding, runs[2].token_embedding)


def test_batch_equals_alone(backend: ClipBackend, vocabulary: Vocabulary) -> None:
    requests = [
        ClassRequest(NAME, solid_images(RED)),
        ClassRequest("bluething", solid_images(BLUE, count=3), confusers=["sky"]),
        ClassRequest("greenthing", solid_images(GREEN, count=2)),
    ]
    # At the model's precision: bfloat16 products of a batch and of one class round apart.
    config = OptimizationConfig(
        steps=20, step_rule="fixed", batch_negatives=False, step_precision="model"
    )
    together = learn_classes(backend, vocabulary, requests, config=config)
    for request, batched in zip(requests, together, strict=True):
        alone = learn_classes(backend, vocabulary, [request], config=config)[0]
        assert batched.name == request.name
        assert (batched.token_embedding - alone.token_embedding).abs().max().item() < 1e-4
        assert (batched.text_feature - alone.text_feature).abs().max().item() < 1e-4
        assert batched.diagnostics["steps_run"] == alone.diagnostics["steps_run"]
    # bfloat16 steps: the same word up to that rounding.
    half = config.with_(step_precision="bfloat16")
    together = learn_classes(backend, vocabulary, requests, config=half)
    for request, batched in zip(requests, together, strict=True):
        alone = learn_classes(backend, vocabulary, [request], config=half)[0]
        assert (batched.text_feature @ alone.text_feature).item() > 0.999
    # Different classes really learned different words.
    assert (together[0].text_feature @ together[1].text_feature).item() < 0.99


def test_early_stopping(backend: ClipBackend, vocabulary: Vocabulary) -> None:
    # Explicit switches: the shipped defaults (10 steps, augmentation, no early stop) differ, and
    # float32 views whatever the CPU (bfloat16 views round the margins the rule stops on).
    # The rule's mechanics at the absolute step size it was written for, without the norm bound.
    config = OptimizationConfig(
        steps=30,
        step_rule="fixed",
        early_stopping=True,
        augment_views=0,
        lr=0.01,
        lr_scale="absolute",
        norm_bound=None,
        lambda_c=1.0,
        view_precision="model",
    )
    stopped = learn_class(backend, vocabulary, NAME, solid_images(RED), config=config)
    assert stopped.diagnostics["stop_reason"] == "converged"
    assert stopped.diagnostics["steps_run"] < config.steps
    assert min(stopped.diagnostics["final_margins"]) >= config.stop_margin
    full_config = config.with_(early_stopping=False)
    full = learn_class(backend, vocabulary, NAME, solid_images(RED), config=full_config)
    assert full.diagnostics["stop_reason"] == "max_steps"
    assert full.diagnostics["steps_run"] == config.steps
    assert len(full.diagnostics["loss_curve"]) == config.steps


def test_holdout_margin_rule_picks_the_step_count_per_class(
    backend: ClipBackend, vocabulary: Vocabulary
) -> None:
    config = OptimizationConfig(step_rule="holdout-margin", early_stopping=False, steps=20)
    learned = learn_class(backend, vocabulary, NAME, solid_images(RED), config=config)
    holdout = learned.diagnostics["holdout"]
    margins = holdout["held_out_margins"]
    assert margins[holdout["best_step"]] == max(margins)
    assert learned.diagnostics["steps_run"] == max(holdout["best_step"], 1)
    single = learn_class(backend, vocabulary, NAME, solid_images(RED, count=1), config=config)
    assert "holdout" not in single.diagnostics  # K = 1: nothing to hold out


def test_progress_and_cancellation(backend: ClipBackend, vocabulary: Vocabulary) -> None:
    events: list[ProgressEvent] = []
    config = OptimizationConfig(steps=8, step_rule="fixed", early_stopping=False)
    learn_class(backend, vocabulary, NAME, solid_images(RED), config=config, progress=events.append)
    assert [e.step for e in events] == list(range(1, 9))
    assert all(e.total == 8 and 0 <= e.exemplar_accuracy <= 1 and e.loss > 0 for e in events)

    def cancel(event: ProgressEvent) -> bool:
        return event.step == 3

    with pytest.raises(OptimizationCancelled, match="step 3"):
        learn_class(backend, vocabulary, NAME, solid_images(RED), config=config, progress=cancel)


def test_negative_sources(backend: ClipBackend, vocabulary: Vocabulary) -> None:
    blue_feature = backend.encode_images(solid_images(BLUE)).mean(dim=0)
    registered = {"bluething": blue_feature.tolist(), NAME: blue_feature}
    learned = learn_class(
        backend,
        vocabulary,
        NAME,
        solid_images(RED),
        confusers=["crimson", "  "],
        registered=registered,
        config=OptimizationConfig(steps=2),
    )
    sources = {(n["name"], n["source"]) for n in learned.diagnostics["negatives"]}
    assert ("crimson", "confuser") in sources
    assert ("bluething", "registered") in sources
    assert (NAME, "registered") not in sources  # a class is never its own negative
    only_confusers = learn_class(
        backend,
        vocabulary,
        NAME,
        solid_images(RED),
        confusers=["crimson"],
        config=OptimizationConfig(negative_sources=("confusers",), steps=2),
    )
    assert only_confusers.diagnostics["negatives"] == [{"name": "crimson", "source": "confuser"}]


def test_initialisation_from_name_or_nearest_word(
    backend: ClipBackend, vocabulary: Vocabulary
) -> None:
    learned = learn_class(
        backend, vocabulary, NAME, solid_images(RED), config=OptimizationConfig(steps=1)
    )
    assert learned.diagnostics["init_from"] == f"name:{NAME}"
    declared = Vocabulary(**{**vocabulary.state(), "source": "checkpoint"})
    # With a declared vocabulary, a name whose tokens were never trained starts elsewhere.
    other = learn_class(
        backend, declared, "qqxzv", solid_images(RED), config=OptimizationConfig(steps=1)
    )
    assert other.diagnostics["init_from"].startswith("nearest word:")


@pytest.mark.parametrize("name", ["", "   ", "!!!", "...", "_" * 3, "x" * 101])
def test_bad_names(backend: ClipBackend, vocabulary: Vocabulary, name: str) -> None:
    with pytest.raises(InvalidNameError):
        learn_class(backend, vocabulary, name, solid_images(RED))


def test_bad_inputs(backend: ClipBackend, vocabulary: Vocabulary) -> None:
    with pytest.raises(NoImagesError):
        learn_class(backend, vocabulary, NAME, [])
    with pytest.raises(InvalidImageError):
        learn_class(backend, vocabulary, NAME, [b"definitely not an image"])
    with pytest.raises(UnknownHintError, match="zzzqqq"):
        learn_class(backend, vocabulary, NAME, solid_images(RED), hints=["zzzqqq"])
    with pytest.raises(ValueError, match="steps"):
        OptimizationConfig(steps=0)


def test_mixed_modes_and_sizes_are_accepted(backend: ClipBackend, vocabulary: Vocabulary) -> None:
    images = [
        Image.new("RGBA", (40, 30), RED + (255,)),
        Image.new("L", (25, 60), 90).convert("L"),
        Image.new("RGB", (40, 40), RED).convert("P"),
        Image.new("CMYK", (50, 50), (0, 220, 220, 30)),
    ]
    config = OptimizationConfig(steps=3, augment_views=0)
    learned = learn_class(backend, vocabulary, NAME, images, config=config)
    assert learned.diagnostics["views"] == 4


def test_phrase_hints_of_vocabulary_words(backend: ClipBackend, vocabulary: Vocabulary) -> None:
    phrase = f"{vocabulary.words[10]}  {vocabulary.words[20].upper()}"
    config = OptimizationConfig(steps=2)
    learned = learn_class(
        backend, vocabulary, NAME, solid_images(RED), hints=[phrase], config=config
    )
    assert learned.diagnostics["anchor_words"] == [f"{vocabulary.words[10]} {vocabulary.words[20]}"]
    with pytest.raises(UnknownHintError, match="zzzqqq"):
        learn_class(backend, vocabulary, NAME, solid_images(RED), hints=[f"{phrase} zzzqqq"])
