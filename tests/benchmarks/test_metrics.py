"""Metrics of the rare-class benchmark: known values by hand."""

from __future__ import annotations

import math

import pytest
import torch

from benchmarks.metrics import (
    average_precision,
    confusion_rate,
    harmonic_mean,
    mean_average_precision,
    mean_std,
    paired_difference,
    top1,
)


def test_top1_counts_argmax_hits() -> None:
    logits = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    assert top1(logits, torch.tensor([0, 1, 1])) == pytest.approx(2 / 3)
    assert top1(torch.empty(0, 2), torch.empty(0, dtype=torch.long)) == 0.0


def test_confusion_rate_counts_images_taken_for_the_look_alikes() -> None:
    labels = torch.tensor([2, 2, 2, 2, 0, 1])
    predictions = torch.tensor([0, 1, 2, 0, 1, 0])  # class 2: two as 0, one as 1, one right
    assert confusion_rate(predictions, labels, 2, [0]) == pytest.approx(2 / 4)
    assert confusion_rate(predictions, labels, 2, [0, 1]) == pytest.approx(3 / 4)
    # other classes' mistakes do not count, and a class without test images scores 0
    assert confusion_rate(predictions, labels, 0, [1]) == pytest.approx(1.0)
    assert confusion_rate(predictions, labels, 3, [0]) == 0.0


def test_harmonic_mean() -> None:
    assert harmonic_mean(0.5, 0.5) == pytest.approx(0.5)
    assert harmonic_mean(0.6, 0.9) == pytest.approx(2 * 0.6 * 0.9 / 1.5)
    assert harmonic_mean(0.0, 0.9) == 0.0  # giving up one side is not a win


def test_average_precision_by_hand() -> None:
    # ranking: pos, neg, pos, neg -> precisions at hits 1/1 and 2/3
    scores = torch.tensor([0.9, 0.8, 0.7, 0.1])
    positives = torch.tensor([True, False, True, False])
    assert average_precision(scores, positives) == pytest.approx((1 + 2 / 3) / 2)
    assert average_precision(scores, torch.tensor([True, True, False, False])) == pytest.approx(1.0)
    assert average_precision(scores, torch.zeros(4, dtype=torch.bool)) == 0.0


def test_mean_average_precision_over_queries() -> None:
    gallery = torch.eye(3)
    labels = torch.tensor([0, 1, 2])
    queries = torch.eye(3)[[0, 2]]
    assert mean_average_precision(queries, gallery, labels, [0, 2]) == pytest.approx(1.0)
    # a query pointing at the wrong image: its positive comes second of three
    assert mean_average_precision(torch.tensor([[0.0, 1.0, 0.5]]), gallery, labels, [2]) == (
        pytest.approx(0.5)
    )


def test_mean_std_and_paired_difference() -> None:
    mean, std = mean_std([1.0, 2.0, 3.0])
    assert mean == pytest.approx(2.0) and std == pytest.approx(1.0)
    assert mean_std([4.0]) == (4.0, 0.0)
    diff = paired_difference([0.5, 0.6, 0.7], [0.4, 0.5, 0.7])
    assert diff["mean"] == pytest.approx(0.2 / 3)
    assert diff["se"] == pytest.approx(diff["std"] / math.sqrt(3))
    assert (diff["won"], diff["lost"], diff["n"]) == (2, 0, 3)  # the third draw is a tie
    with pytest.raises(ValueError):
        paired_difference([1.0], [1.0, 2.0])
