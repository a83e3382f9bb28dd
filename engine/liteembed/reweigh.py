"""A second pass for the classes whose word takes its neighbours' images.

The evidence weight (`lambda_img`) is a trade: images of the mined neighbours pull the word off
them, and a stronger pull costs the class some of its own unseen images. Most new classes have no
neighbour close enough for that to pay; the ones that do show it once learned: their word still
wins a large share of its own evidence images (the evidence's `kept` share, liteembed.step_search).
Those classes, and only those, are learned again at a stronger weight (`reweigh_lambda_img`),
with the batch's other words as registered negatives (with `batch_negatives`). The second word
replaces the first only if it keeps clearly more of the evidence (`reweigh_min_gain`): a word that
cannot move off its neighbour (the neighbour's images and its own are one cluster to the image
encoder) would only lose its own images to the stronger weight; nor may the second word move far
from the first (`reweigh_min_cosine`): a word that releases its neighbour's images only by turning
away has left its own class with them (on validation, a class whose images and its neighbour's
are one cluster to the image encoder lost a third of its own images that way). The settings were
chosen on validation (benchmarks/evidence_search.py: the look-alike validation classes, the
validation classes and base-as-new folds); the pass is on where a model's recorded defaults turn
it on.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from liteembed.config import OptimizationConfig
from liteembed.requests import ClassRequest, LearnedClass

# Learns the requests at a config, with extra registered negatives (name -> text feature).
LearnAgain = Callable[
    [Sequence[ClassRequest], OptimizationConfig, Mapping[str, torch.Tensor]], list[LearnedClass]
]


def evidence_kept(learned: LearnedClass) -> float | None:
    """The share of the class's evidence images its word leaves to their own class (None: no
    evidence)."""
    evidence = learned.diagnostics.get("evidence") or {}
    kept = evidence.get("kept")
    return None if kept is None else float(kept)


def held_out_accuracy(learned: LearnedClass) -> float | None:
    """The share of the class's held-out images its word (learned without them) won in the step
    search, at the chosen step (None: nothing held out)."""
    value = (learned.diagnostics.get("holdout") or {}).get("accuracy")
    return None if value is None else float(value)


def takers(learned: Sequence[LearnedClass], config: OptimizationConfig) -> list[int]:
    """Indices of the classes learned again: their word keeps less than `reweigh_kept` of its
    evidence (none without evidence in the first pass, or when the second would not be
    stronger)."""
    if not 0 < config.lambda_img < config.reweigh_lambda_img or config.reweigh_kept <= 0:
        return []
    return [
        i
        for i, cls in enumerate(learned)
        if (kept := evidence_kept(cls)) is not None and kept < config.reweigh_kept
    ]


def reweigh(
    requests: Sequence[ClassRequest],
    learned: list[LearnedClass],
    config: OptimizationConfig,
    learn_again: LearnAgain,
) -> list[LearnedClass]:
    """`learned` with each taker (module docstring) replaced by its second word where that keeps
    at least `reweigh_min_gain` more of its evidence; every taker's diagnostics record both."""
    chosen = takers(learned, config)
    if not chosen:
        return learned
    # The batch's other words are negatives of the second pass as they were of the first; without
    # batch negatives a class's word does not depend on the batch it was learned in.
    others = (
        {cls.name: cls.text_feature for i, cls in enumerate(learned) if i not in chosen}
        if config.batch_negatives
        else {}
    )
    stronger = config.with_(lambda_img=config.reweigh_lambda_img, reweigh_kept=0.0)
    again = learn_again([requests[i] for i in chosen], stronger, others)
    result = list(learned)
    for i, second in zip(chosen, again, strict=True):
        before, after = evidence_kept(learned[i]), evidence_kept(second)
        own_before, own_after = held_out_accuracy(learned[i]), held_out_accuracy(second)
        cosine = float(
            F.cosine_similarity(learned[i].text_feature.float(), second.text_feature.float(), dim=0)
        )
        replaced = (
            before is not None
            and after is not None
            and after - before >= config.reweigh_min_gain
            and (
                not config.reweigh_keep_own
                or own_after is None
                or own_before is None
                or own_after >= own_before
            )
            and cosine >= config.reweigh_min_cosine
        )
        record: dict[str, Any] = {
            "kept_before": before,
            "kept_after": after,
            "held_out_accuracy_before": own_before,
            "held_out_accuracy_after": own_after,
            "cosine": round(cosine, 6),
            "lambda_img": config.reweigh_lambda_img,
            "replaced": replaced,
        }
        winner = second if replaced else learned[i]
        winner.diagnostics.setdefault("evidence", {})["reweigh"] = record
        # Both passes went into the winner, whichever it is.
        winner.diagnostics["seconds"] = learned[i].diagnostics.get("seconds", 0.0) + (
            second.diagnostics.get("seconds", 0.0)
        )
        result[i] = winner
    return result


__all__ = ["evidence_kept", "held_out_accuracy", "reweigh", "takers"]
