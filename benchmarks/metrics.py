"""Metrics of the joint rare-class setting, and paired comparisons between methods."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch


def top1(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of rows whose highest logit is the label (0.0 for no rows)."""
    if labels.numel() == 0:
        return 0.0
    return float((logits.argmax(dim=1) == labels).float().mean().item())


def confusion_rate(
    predictions: torch.Tensor, labels: torch.Tensor, source: int, targets: Sequence[int]
) -> float:
    """Fraction of the images labelled `source` whose prediction is one of `targets` (0.0 when
    there are no such images): how often a class is taken for its look-alikes."""
    rows = labels == source
    if not bool(rows.any()):
        return 0.0
    hits = torch.isin(predictions[rows], torch.as_tensor(list(targets), dtype=predictions.dtype))
    return float(hits.float().mean().item())


def harmonic_mean(a: float, b: float) -> float:
    """Harmonic mean of two accuracies; 0 when either is 0 (a method that gives up one side)."""
    if a <= 0 or b <= 0:
        return 0.0
    return 2 * a * b / (a + b)


def average_precision(scores: torch.Tensor, positives: torch.Tensor) -> float:
    """Non-interpolated AP of one query: the mean, over the positives, of the precision at
    their rank. Ties are broken by gallery order (stable sort), so the value is deterministic."""
    positives = positives.bool()
    count = int(positives.sum().item())
    if count == 0:
        return 0.0
    order = torch.sort(scores, descending=True, stable=True).indices
    hits = positives[order].float()
    ranks = torch.arange(1, len(hits) + 1, dtype=torch.float32)
    precision_at_hit = torch.cumsum(hits, 0)[hits.bool()] / ranks[hits.bool()]
    return float(precision_at_hit.mean().item())


def mean_average_precision(
    queries: torch.Tensor,
    gallery: torch.Tensor,
    gallery_labels: torch.Tensor,
    query_labels: Sequence[int],
) -> float:
    """Text-to-image retrieval: each query feature ranks the whole gallery by cosine; its class's
    images are the positives. Features are expected L2-normalised."""
    scores = queries @ gallery.T
    aps = [
        average_precision(scores[i], gallery_labels == label)
        for i, label in enumerate(query_labels)
    ]
    return sum(aps) / len(aps) if aps else 0.0


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for fewer than two values)."""
    if not values:
        return math.nan, math.nan
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, 0.0
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
    return mean, math.sqrt(var)


def mean_se(values: Sequence[float]) -> dict[str, float]:
    """{"mean", "se"}: the mean and its standard error over draws."""
    mean, std = mean_std(values)
    return {"mean": mean, "se": std / math.sqrt(len(values)) if values else math.nan}


def paired_difference(a: Sequence[float], b: Sequence[float]) -> dict[str, float]:
    """a - b over the same draws: mean, std and standard error of the per-draw differences, and
    how many draws a won and lost (ties count as neither).

    Draws spread a lot (support sets differ), so variants are compared draw by draw, not by
    their separate means."""
    if len(a) != len(b):
        raise ValueError("paired difference needs the same number of draws on both sides")
    diffs = [x - y for x, y in zip(a, b, strict=True)]
    mean, std = mean_std(diffs)
    se = std / math.sqrt(len(diffs)) if diffs else math.nan
    return {
        "mean": mean,
        "std": std,
        "se": se,
        "n": float(len(diffs)),
        "won": float(sum(d > 0 for d in diffs)),  # draws where a beat b
        "lost": float(sum(d < 0 for d in diffs)),
    }
