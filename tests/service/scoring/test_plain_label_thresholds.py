"""A plain label's threshold in /classify: the model's plain-word threshold, raised to the
word's noise ceiling, so a word that lies close to noise does not accept noise."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import replace
from typing import Any, cast

import numpy as np
import pytest

from service.core.config import Settings
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
