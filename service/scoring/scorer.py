"""Scoring image features against the class matrix: cosines, softmax over all classes, top-k,
and the raw cosine of each of the top-k (what a class's acceptance threshold is compared with).

One `Scorer` interface with two implementations, chosen once per process by `scorer_for` from the
device the model runs on:
- `CpuScorer`: one torch product for the batch on the CPU, then an argpartition top-k per image
  (the path the CPU benchmarks measured).
- `DeviceScorer`: the matrix uploaded to the accelerator once per snapshot; the product, the
  log-sum-exp over all classes and the top-k run there, and only (B, k) values come back.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple, Protocol

import numpy as np
import torch

from service.scoring.matrix import ClassMatrix

# Beyond this many classes, top-k picks candidates with argpartition (O(C)) before sorting them.
_PARTITION_FROM = 64


class TopK(NamedTuple):
    """One image's result: the top rows of the snapshot, best first."""

    indices: np.ndarray  # int64 rows of the snapshot
    probabilities: np.ndarray  # float64 softmax over the scored rows
    similarities: np.ndarray  # float64 raw cosine of the image and each row (before the scale)


# The rows of the snapshot one image is scored against (a tenant's classes); None: every row.
Scope = np.ndarray | None


class Scorer(Protocol):
    def top_k(
        self,
        snapshot: ClassMatrix,
        features: np.ndarray,
        scale: float,
        ks: Sequence[int],
        scopes: Sequence[Scope] | None = None,
    ) -> list[TopK]:
        """For each row n of `features` (B, D) float32, the best `ks[n]` rows of `snapshot` by
        softmax(scale * cosine) over the rows of `scopes[n]` (ascending; None or no `scopes`:
        every row): indices into the snapshot, probabilities and raw cosines, best first, ties
        broken by the lower index."""
        ...


class CpuScorer:
    def top_k(
        self,
        snapshot: ClassMatrix,
        features: np.ndarray,
        scale: float,
        ks: Sequence[int],
        scopes: Sequence[Scope] | None = None,
    ) -> list[TopK]:
        # One product for the whole batch: at 10^5 classes the matrix is read once per batch
        # instead of once per request (the product is memory-bound). A tenant's scope then
        # picks its logits out of the row: one gather of its classes, not a second product.
        logits = class_logits(snapshot.matrix, features)
        results = []
        for n, k in enumerate(ks):
            rows = scopes[n] if scopes is not None else None
            picked = logits[n] if rows is None else logits[n][rows]
            best, probabilities = top_k_softmax(picked, scale, k)
            similarities = picked[best].astype(np.float64)
            results.append(TopK(best if rows is None else rows[best], probabilities, similarities))
        return results


class DeviceScorer:
    """Scores on `device`. Used from one thread (the model runner's)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._uploaded: tuple[ClassMatrix, torch.Tensor] | None = None

    def weights(self, snapshot: ClassMatrix) -> torch.Tensor:
        """The snapshot's matrix on the device, uploaded once per snapshot (a class change makes
        a new snapshot); only the latest snapshot's copy is kept."""
        uploaded = self._uploaded
        if uploaded is None or uploaded[0] is not snapshot:
            self._uploaded = None  # free the old copy before the new one is made
            uploaded = (snapshot, torch.from_numpy(snapshot.matrix).to(self.device))
            self._uploaded = uploaded
        return uploaded[1]

    def top_k(
        self,
        snapshot: ClassMatrix,
        features: np.ndarray,
        scale: float,
        ks: Sequence[int],
        scopes: Sequence[Scope] | None = None,
    ) -> list[TopK]:
        weights = self.weights(snapshot)
        if scopes is None or all(rows is None for rows in scopes):
            best, probabilities, similarities = top_k_softmax_on_device(
                weights, features, scale, max(ks, default=0)
            )
            return [
                TopK(best[n, :k], probabilities[n, :k], similarities[n, :k])
                for n, k in enumerate(ks)
            ]
        # Scoped images one by one: the rows differ per image (a batch mixes tenants).
        results = []
        for n, k in enumerate(ks):
            rows = scopes[n]
            part = weights if rows is None else weights[torch.from_numpy(rows).to(self.device)]
            one = top_k_softmax_on_device(part, features[n : n + 1], scale, k)
            picked = one.indices[0] if rows is None else rows[one.indices[0]]
            results.append(TopK(picked, one.probabilities[0], one.similarities[0]))
        return results


def scorer_for(device: torch.device) -> Scorer:
    """The scorer for a model running on `device`: next to a GPU encode of a few ms, reading
    10^5 classes on the CPU and copying B x C logits back would dominate, so score there."""
    if device.type == "cpu":
        return CpuScorer()
    return DeviceScorer(device)


def class_logits(matrix: np.ndarray, features: np.ndarray) -> np.ndarray:
    """`features @ matrix.T` as float32, one product for the whole batch.

    torch rather than numpy: the product runs on the model-runner thread, with torch's own
    thread pool, so it never competes with the encoder for cores the way a second (BLAS) pool
    would. A float16 matrix is multiplied in float16: the product is memory-bound, and reading
    half the bytes makes it about twice as fast on CPU (measured by benchmarks/perf).
    """
    feats = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32))
    weights = torch.from_numpy(matrix)
    if weights.dtype != torch.float32:
        return (feats.to(weights.dtype) @ weights.T).float().numpy()
    return (feats @ weights.T).numpy()


def top_k_softmax(logits: np.ndarray, scale: float, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k rows of softmax(scale * logits) over all C classes, best first.

    Returns (indices, probabilities), each (k',) with k' = min(k, C). The softmax needs every
    logit for its denominator (O(C)), but only k entries are ever sorted: argpartition picks
    them in O(C) instead of sorting all C. Ties are broken by the lower index, as a stable
    sort would. float32 over C, float64 for the sum and the k results: at 10^5 classes the
    float64 copy of every logit cost more than the product's own top-k.
    """
    count = logits.shape[0]
    k = min(k, count)
    if k <= 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float64)
    scaled = np.multiply(logits, np.float32(scale), dtype=np.float32)
    peak = float(scaled.max())
    total = float(np.exp(scaled - np.float32(peak)).sum(dtype=np.float64))
    if count > _PARTITION_FROM and k < count:
        candidates = np.argpartition(scaled, count - k)[count - k :]
    else:
        candidates = np.arange(count)
    order = np.lexsort((candidates, -scaled[candidates]))[:k]
    best = candidates[order]
    return best.astype(np.int64), np.exp(scaled[best].astype(np.float64) - peak) / total


def top_k_softmax_on_device(
    weights: torch.Tensor, features: np.ndarray, scale: float, k: int
) -> TopK:
    """`top_k_softmax` for a batch, computed where `weights` lives (an accelerator), with the
    raw cosines of the picked rows.

    Returns (indices, probabilities, similarities), each (B, k') with k' = min(k, C), best
    first, ties broken by the lower index as on the CPU.
    """
    count = weights.shape[0]
    k = min(k, count)
    batch = features.shape[0]
    if k <= 0:
        empty = np.zeros((batch, 0), dtype=np.float64)
        return TopK(np.zeros((batch, 0), dtype=np.int64), empty, empty.copy())
    feats = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32))
    feats = feats.to(weights.device, weights.dtype)
    raw = (feats @ weights.T).float()
    scaled = raw * scale
    log_total = torch.logsumexp(scaled, dim=1, keepdim=True)
    values, indices = torch.topk(scaled, k, dim=1)
    probabilities = torch.exp(values - log_total).double().cpu().numpy()
    similarities = raw.gather(1, indices).double().cpu().numpy()
    indices_np = indices.cpu().numpy().astype(np.int64)
    values_np = values.cpu().numpy()
    for row in range(batch):  # topk's order among equal values is unspecified
        order = np.lexsort((indices_np[row], -values_np[row]))
        indices_np[row] = indices_np[row][order]
        probabilities[row] = probabilities[row][order]
        similarities[row] = similarities[row][order]
    return TopK(indices_np, probabilities, similarities)
