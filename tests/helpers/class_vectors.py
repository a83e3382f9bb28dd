"""Class vectors and snapshots for the scoring tests, and the full-sort reference top-k."""

from __future__ import annotations

from typing import Any

import numpy as np

from service.scoring.matrix import ClassMatrix, assemble


def random_matrix(count: int, dim: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    m = rng.normal(size=(count, dim)).astype(np.float32)
    return np.ascontiguousarray(m / np.linalg.norm(m, axis=1, keepdims=True))


def snapshot_of(matrix: np.ndarray) -> ClassMatrix:
    count = matrix.shape[0]
    names = [f"class {i}" for i in range(count)]
    return assemble(
        1, "m", matrix, names, [n.casefold() for n in names], [f"id-{i}" for i in range(count)]
    )


def full_sort_reference(logits: np.ndarray, scale: float, k: int) -> tuple[np.ndarray, Any]:
    scaled = scale * logits.astype(np.float64)
    probabilities = np.exp(scaled - scaled.max())
    probabilities /= probabilities.sum()
    order = np.argsort(-probabilities, kind="stable")[:k]
    return order, probabilities[order]
