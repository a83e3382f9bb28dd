"""Acceptance in /classify: a plain label's threshold is the model's plain-word threshold raised
to the word's noise ceiling, so a word that lies close to noise does not accept noise; an image
the noise gate takes for noise is accepted as nothing."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import replace
from typing import Any, cast

import numpy as np
import pytest

from service.core.config import Settings
from service.scoring.acceptance import accepted, looks_like_noise
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
