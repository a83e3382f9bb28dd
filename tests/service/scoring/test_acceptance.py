"""Acceptance in /classify: a plain label's threshold is the model's plain-word threshold raised
to the word's noise ceiling, so a word that lies close to noise does not accept noise; an image
the noise gate takes for noise is accepted as nothing; a registered class is beaten by a known
concept nearer to the image by more than the background margin (the operator's, else the
model's), never by a word named like itself, and a plain word never is."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import replace
from types import SimpleNamespace
from typing import Any, cast

import numpy as np
import pytest
import torch

from liteembed.background import Background
from service.core.config import Settings
from service.runtime import Runtime
from service.scoring.acceptance import accepted, background_margin, looks_like_noise, nearer_known
from service.scoring.batcher import ModelRunner
from service.scoring.labels import TextFeatureCache, label_matrix
from service.scoring.sync import ClassMatrixCache


class NoClasses:
    """A class matrix holding no registered class: every label is a plain word."""

    def snapshot(self, model_id: str, dim: int) -> Any:
        return self

    def index_of(self, key: Any) -> None:
        return None


def test_plain_labels_are_raised_to_their_noise_ceilings(
    sqlite_url: str, make_settings: Callable[..., Settings]
) -> None:
    from service.runtime import load_runtime

    loaded = load_runtime(make_settings(sqlite_url))
    labels = ["dog", "cat", "stripes", "red", "car", "tree"]
    runner = ModelRunner(loaded.backend.encode_image_batch)
    try:

        def thresholds(default: float) -> np.ndarray:
            runtime = replace(loaded, word_threshold=default)
            found = asyncio.run(
                label_matrix(
                    labels,
                    tenant="default",
                    runtime=runtime,
                    classifier=cast(ClassMatrixCache, NoClasses()),
                    runner=runner,
                    text_features=TextFeatureCache(),
                )
            )
            ceilings = (runtime.noise @ found.matrix.T).max(axis=0)
            assert found.thresholds == pytest.approx(np.maximum(ceilings, default), abs=1e-6)
            return found.thresholds

        low = thresholds(-1.0)  # every word at its own ceiling
        assert len(set(np.round(low, 6))) == len(labels)
        high = thresholds(float(low.max()) + 0.1)  # above every ceiling: the model's value
        assert np.all(high == pytest.approx(float(low.max()) + 0.1))
    finally:
        runner.stop()


def test_an_image_taken_for_noise_is_accepted_as_nothing(
    sqlite_url: str, make_settings: Callable[..., Settings]
) -> None:
    from service.runtime import load_runtime

    loaded = load_runtime(make_settings(sqlite_url))
    noise_image = loaded.noise[0]
    others = loaded.noise[1:]
    likeness = float((others @ noise_image).max())
    # A gate between the noise image's likeness to the other noise images and 1 (its own).
    gated = replace(loaded, noise_gate=(likeness + 1.0) / 2)
    assert looks_like_noise(noise_image, gated)
    assert not looks_like_noise(noise_image, replace(loaded, noise_gate=1.5))
    assert not looks_like_noise(noise_image, replace(loaded, noise_gate=float("nan")))
    sims, limits = np.array([0.9, 0.5]), np.array([0.1, np.nan])
    assert accepted(sims, limits, 0.2) == [True, True]
    assert accepted(sims, limits, 0.2, noise=True) == [False, False]


def test_the_background_margin_is_the_operators_else_the_models_and_can_be_switched_off(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    from liteembed import background

    monkeypatch.setattr(background, "RECORDED_MARGINS", {"m@1": 0.01})
    assert background_margin(make_settings("sqlite://"), "m@1") == 0.01
    assert np.isnan(background_margin(make_settings("sqlite://"), "other@1"))
    assert background_margin(make_settings("sqlite://", background_margin=-0.02), "m@1") == -0.02
    off = make_settings("sqlite://", background_margin=0.05, background_competitors=False)
    assert np.isnan(background_margin(off, "m@1"))


def test_a_registered_class_is_beaten_by_a_nearer_known_concept_other_than_itself() -> None:
    words = ["hexagon", "octagon"]
    runtime = cast(
        Runtime,
        SimpleNamespace(background=Background(words=words, features=torch.eye(2, 3))),
    )
    feature = np.array([0.8, 0.6, 0.0], dtype=np.float32)  # hexagon 0.8, octagon 0.6
    labels, sims = ["coin", "hexagon", "car", "tile"], np.array([0.75, 0.5, 0.2, 0.79])

    def nearer(margin: float, registered: list[bool] | None = None) -> list[str | None]:
        flags = registered if registered is not None else [True, True, False, True]
        return nearer_known(feature, labels, sims, flags, runtime, margin)

    # coin: hexagon nearer by 0.05; a class named hexagon: octagon is its rival, 0.1 nearer;
    # car is a plain word; tile: hexagon nearer by only 0.01.
    assert nearer(0.02) == ["hexagon", "octagon", None, None]
    assert nearer(0.0) == ["hexagon", "octagon", None, "hexagon"]
    assert nearer(0.07) == [None, "octagon", None, None]
    assert nearer(0.2) == [None] * 4
    assert nearer(float("nan")) == [None] * 4
    assert nearer(0.0, [False] * 4) == [None] * 4
    bare = cast(Runtime, SimpleNamespace(background=None))
    assert nearer_known(feature, labels, sims, [True] * 4, bare, 0.0) == [None] * 4
