"""The pooled hold-out step rule: the search batch of held-out copies (each class copied once per
held-out image, the final run carried along), the curves the rule maximises, and when to stop
searching. `liteembed.optimize` runs the loop; this module decides what the loop's numbers mean."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import torch

from liteembed.batch import Batch, RunResult
from liteembed.config import OptimizationConfig
from liteembed.losses import LossInputs, evidence_logits
from liteembed.problem import ClassProblem


def fold_copies(batch: Batch) -> tuple[Batch, list[int]]:
    """The hold-out search's batch: each class with `holdout_folds` > 1 is copied once per fold,
    each copy holding out another of its images (from its random one on, in turn), so that the
    pooled accuracy rests on more than one image per class. Returns the batch and, per row, the
    class it copies; a copy's peers are the first copies of its class's peers."""
    folds = batch.config.holdout_folds
    if folds <= 1:
        return batch, list(range(len(batch.problems)))
    rows: list[ClassProblem] = []
    owners: list[int] = []
    first: list[int] = []
    for i, problem in enumerate(batch.problems):
        first.append(len(rows))
        if problem.holdout is None:
            rows.append(problem)
            owners.append(i)
            continue
        count = int(problem.groups.max().item()) + 1
        for f in range(min(folds, count)):
            rows.append(replace(problem, holdout=(problem.holdout + f) % count))
            owners.append(i)
    peers = [[first[j] for j in batch.peers[owner]] for owner in owners]
    search = replace(batch, problems=rows, init=batch.init[owners], peers=peers)
    return search, owners


def carry_final(search: Batch, batch: Batch) -> Batch:
    """The search batch with one more row per class: the class itself on all its images, its
    peers the other classes' such rows, exactly as the final run would train it."""
    start = len(search.problems)
    return replace(
        search,
        problems=[*search.problems, *(replace(p, holdout=None) for p in batch.problems)],
        init=torch.cat([search.init, batch.init]),
        peers=[*search.peers, *([start + j for j in peers] for peers in batch.peers)],
        final_from=start,
    )


def read_carried(search: Batch, run: RunResult, budgets: list[int]) -> RunResult:
    """The final run read off the search's carried rows: each class's state after its budget
    (every budget is one the search ran past: the chosen step is at most its last)."""
    assert search.final_from is not None
    start = search.final_from
    count = len(search.problems) - start
    steps = [min(b, len(run.snapshots)) for b in budgets]
    params = torch.stack([run.snapshots[t - 1][i] for i, t in enumerate(steps)])
    return RunResult(
        params,
        [run.curves[start + i][: steps[i]] for i in range(count)],
        steps,
        ["max_steps"] * count,
        *([[] for _ in range(count)] for _ in range(4)),
    )


def peers_of(names: Sequence[str]) -> list[list[int]]:
    """For each class, the batch's classes with another name (one name never fights itself)."""
    keys = [n.strip().lower() for n in names]
    return [[j for j, other in enumerate(keys) if other != key] for key in keys]


def holdout_rank(
    accuracy: list[float], margins: list[float], config: OptimizationConfig
) -> Callable[[int], tuple[float, float]]:
    """The order in which the pooled rule prefers steps: higher held-out accuracy first; among
    equal accuracies the earliest step, or (`holdout_ties="margin"`) the higher pooled mean
    margin, which still moves when a dozen held-out images leave accuracy flat."""
    if config.holdout_ties == "margin":
        return lambda s: (accuracy[s], margins[s])
    return lambda s: (accuracy[s], -s)


def search_curves(
    batch: Batch,
    accuracy: list[list[float]],
    margins: list[list[float]],
    kept: list[list[float]],
) -> tuple[list[float], list[float], list[float]]:
    """Per step of the search: the objective the pooled rule maximises, the pooled held-out
    margin (its tie-break) and the pooled share of evidence kept. The objective is the pooled
    held-out accuracy, or with `holdout_evidence` and evidence present, its mean with the share
    of evidence images the words leave alone (a step that wins its own images by taking other
    classes' is not the best step)."""
    include = [p.holdout is not None for p in batch.problems]
    pooled = pooled_mean(accuracy, include)
    pooled_margin = pooled_mean(margins, include)
    pooled_kept = pooled_mean(kept, [bool(k) for k in kept])
    if batch.config.holdout_evidence and pooled_kept and pooled:
        length = min(len(pooled), len(pooled_kept))
        pooled = [(pooled[s] + pooled_kept[s]) / 2 for s in range(length)]
        pooled_margin = pooled_margin[:length]
    return pooled, pooled_margin, pooled_kept


def held_out_similarities(
    search: Batch, owners: list[int], run: RunResult, step: int
) -> list[torch.Tensor | None]:
    """Per class of the batch, its held-out images' similarities to the words learned without
    them, at the chosen step (None for a class that held nothing out)."""
    count = max(owners) + 1 if owners else 0
    found = per_class_at(run.holdout_similarity, owners, step, count)
    return [None if values is None else torch.tensor(values) for values in found]


def held_out_means(
    curves: list[list[float]], owners: list[int], step: int, count: int
) -> list[float | None]:
    """Per class, the mean at `step` of its search copies' curves (held-out accuracy or margin;
    None for a class that held nothing out)."""
    found = per_class_at(curves, owners, step, count)
    return [None if values is None else sum(values) / len(values) for values in found]


def per_class_at(
    curves: list[list[float]], owners: list[int], step: int, count: int
) -> list[list[float] | None]:
    """Per class 0..count-1, its search copies' values at `step` (a shorter curve: its last)."""
    found: dict[int, list[float]] = {}
    for row, owner in enumerate(owners):
        curve = curves[row]
        if curve:
            found.setdefault(owner, []).append(curve[min(step, len(curve) - 1)])
    return [found.get(i) for i in range(count)]


def kept_share(inputs: LossInputs) -> float | None:
    """The share of evidence images whose best match is not the new word."""
    logits = evidence_logits(inputs)
    if logits is None:
        return None
    word, others = logits
    return float((word.detach() < others.detach().max(dim=1).values).float().mean().item())


def pooled_mean(curves: list[list[float]], include: list[bool]) -> list[float]:
    """Per step, the mean over the classes that held an image out."""
    rows = [c for c, keep in zip(curves, include, strict=True) if keep and c]
    if not rows:
        return []
    length = min(len(c) for c in rows)
    return [sum(c[s] for c in rows) / len(rows) for s in range(length)]


def settled(pooled: list[float], config: OptimizationConfig) -> bool:
    """With earliest ties, a step of perfect pooled accuracy is the choice whatever follows (no
    later step can score higher, and a tie goes to the earlier): the search can stop there."""
    return config.holdout_ties == "earliest" and max(pooled) >= 1.0


def is_carried(batch: Batch, row: int) -> bool:
    return batch.final_from is not None and row >= batch.final_from


def stop_holdout_search(
    batch: Batch,
    rows: list[int],
    active: list[bool],
    reasons: list[str],
    margins: list[list[float]],
    accuracy: list[list[float]],
    kept: list[list[float]],
) -> None:
    """Held-out quality has not improved for 2 * patience steps: more steps only overfit."""
    config = batch.config

    def stale(curve: list[float], rank: Callable[[int], Any] | None = None) -> bool:
        best = max(range(len(curve)), key=rank or (lambda s: (curve[s], -s)))
        return len(curve) - 1 - best >= 2 * config.patience and len(curve) > config.min_steps

    if config.step_rule == "holdout":
        pooled, pooled_margin, _ = search_curves(batch, accuracy, margins, kept)
        if pooled and (
            stale(pooled, holdout_rank(pooled, pooled_margin, config)) or settled(pooled, config)
        ):
            for i in rows:
                active[i] = False
                reasons[i] = "holdout"
        return
    for i in rows:
        if margins[i] and stale(margins[i]):
            active[i] = False
            reasons[i] = "holdout"


__all__ = [
    "carry_final",
    "fold_copies",
    "held_out_means",
    "held_out_similarities",
    "holdout_rank",
    "is_carried",
    "kept_share",
    "peers_of",
    "per_class_at",
    "pooled_mean",
    "read_carried",
    "search_curves",
    "settled",
    "stop_holdout_search",
]
