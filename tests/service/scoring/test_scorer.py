"""Scoring: the top-k softmax on the CPU and on a device, against a full sort."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from service.scoring.matrix import assemble
from service.scoring.scorer import (
    CpuScorer,
    DeviceScorer,
    class_logits,
    scorer_for,
    top_k_softmax,
    top_k_softmax_on_device,
)
from tests.helpers.class_vectors import full_sort_reference, random_matrix, snapshot_of

DIM = 8


@pytest.mark.parametrize("count", [3, 64, 65, 20_000])
def test_top_k_equals_the_full_sort(count: int) -> None:
    matrix = random_matrix(count, 64)
    query = random_matrix(1, 64, seed=1)
    logits = class_logits(matrix, query)[0]
    for k in (1, 5, 100):
        indices, scores = top_k_softmax(logits, 100.0, k)
        want_indices, want_scores = full_sort_reference(logits, 100.0, k)
        assert indices.tolist() == want_indices.tolist()
        np.testing.assert_allclose(scores, want_scores, rtol=1e-5, atol=1e-12)


def test_top_k_breaks_ties_by_index() -> None:
    logits = np.array([0.5, 0.9, 0.9, 0.1] + [0.0] * 100, dtype=np.float32)
    indices, _ = top_k_softmax(logits, 10.0, 3)
    assert indices.tolist() == [1, 2, 0]


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_device_top_k_equals_the_cpu_top_k(dtype: Any) -> None:
    """The accelerator path's arithmetic, run here on the CPU: same winners, same probabilities."""
    matrix = random_matrix(20_000, DIM).astype(dtype)
    matrix[7] = matrix[3]  # an exact tie: the lower index must come first on both paths
    queries = random_matrix(4, DIM, seed=5)
    queries[0] = matrix[3].astype(np.float32)
    weights = torch.from_numpy(matrix)
    best, probabilities, similarities = top_k_softmax_on_device(weights, queries, 60.0, 10)
    assert best.shape == probabilities.shape == similarities.shape == (4, 10)
    logits = class_logits(matrix, queries)
    for row in range(4):
        want, want_p = top_k_softmax(logits[row], 60.0, 10)
        assert best[row].tolist() == want.tolist()
        np.testing.assert_allclose(probabilities[row], want_p, rtol=1e-4)
        np.testing.assert_allclose(similarities[row], logits[row][want], rtol=1e-3, atol=1e-3)
    assert best[0][:2].tolist() == [3, 7]
    few, few_p, _ = top_k_softmax_on_device(weights[:3], queries, 60.0, 10)  # k > C
    assert few.shape == (4, 3)
    np.testing.assert_allclose(few_p.sum(axis=1), 1.0, rtol=1e-6)


def test_the_scorer_follows_the_model_device() -> None:
    assert isinstance(scorer_for(torch.device("cpu")), CpuScorer)
    on_gpu = scorer_for(torch.device("cuda", 0))  # made without touching CUDA
    assert isinstance(on_gpu, DeviceScorer) and on_gpu.device == torch.device("cuda", 0)


def test_the_device_scorer_uploads_each_snapshot_once() -> None:
    scorer = DeviceScorer(torch.device("cpu"))
    first = snapshot_of(random_matrix(5, DIM))
    second = snapshot_of(random_matrix(6, DIM, seed=1))
    weights = scorer.weights(first)
    assert scorer.weights(first) is weights
    replaced = scorer.weights(second)
    assert replaced is not weights and replaced.shape == (6, DIM)
    np.testing.assert_array_equal(replaced.numpy(), second.matrix)


def test_a_tenant_scope_scores_only_its_rows_on_both_scorers() -> None:
    """A tenant is a set of rows of the one matrix: its top-k and softmax are those of its rows
    alone, by their indices in the whole matrix, on the CPU and on a device alike."""
    count = 3000
    matrix = random_matrix(count, DIM)
    keys = [f"t{i % 30:02d}/class {i}" for i in range(count)]  # 30 tenants, interleaved rows
    snapshot = assemble(1, "m", matrix, [f"class {i}" for i in range(count)], keys, keys)
    rows = snapshot.tenant_rows("t07")
    assert rows.tolist() == list(range(7, count, 30))
    assert snapshot.tenant_rows("nobody").size == 0
    queries = random_matrix(3, DIM, seed=9)
    scopes = [rows, None, snapshot.tenant_rows("nobody")]
    for scorer in (CpuScorer(), DeviceScorer(torch.device("cpu"))):
        scoped, everyone, empty = scorer.top_k(snapshot, queries, 50.0, [5, 5, 5], scopes)
        want, want_p = top_k_softmax(class_logits(matrix[rows], queries[:1])[0], 50.0, 5)
        assert scoped[0].tolist() == rows[want].tolist()
        np.testing.assert_allclose(scoped[1], want_p, rtol=1e-4)
        assert set(scoped[0].tolist()) <= set(rows.tolist())
        whole = top_k_softmax(class_logits(matrix, queries[1:2])[0], 50.0, 5)
        assert everyone[0].tolist() == whole[0].tolist()
        assert empty[0].size == 0 and empty[1].size == 0 and empty.similarities.size == 0
        # The raw cosine of each picked row, whichever scorer and scope.
        for result, query in ((scoped, queries[0]), (everyone, queries[1])):
            np.testing.assert_allclose(
                result.similarities, matrix[result.indices] @ query, rtol=1e-5, atol=1e-6
            )
