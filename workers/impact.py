"""Which classes take another class's exemplars: the check a registration must pass.

Every exemplar of every class considered is predicted as the class whose text feature it is
most similar to (raw cosine; the softmax of /classify ranks the same way). An exemplar predicted
as another class was "taken" by it. The train job runs this over the tenant's ready classes and
the classes it just learned, before anything is stored: a ready class whose exemplars a new class
takes (or that takes a new class's exemplars) is re-learned together with it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ScoredClass:
    class_id: str
    name: str
    feature: np.ndarray  # (E,) its text feature
    exemplars: np.ndarray  # (K, E) its exemplars' image features (K may be 0)


@dataclass(frozen=True)
class Taking:
    """`taken` of the `of` exemplars of `victim` are predicted as `taker`."""

    victim: str
    taker: str
    taken: int
    of: int


def takings(classes: Sequence[ScoredClass]) -> list[Taking]:
    """Every (victim, taker) pair with at least one exemplar taken, most taken first."""
    if not classes:
        return []
    features = np.stack([np.asarray(c.feature, dtype=np.float32) for c in classes])
    found: list[Taking] = []
    for index, victim in enumerate(classes):
        exemplars = np.asarray(victim.exemplars, dtype=np.float32).reshape(-1, features.shape[1])
        if not len(exemplars):
            continue
        winners = Counter((exemplars @ features.T).argmax(axis=1).tolist())
        for winner, count in winners.items():
            if winner != index:
                found.append(
                    Taking(victim.class_id, classes[winner].class_id, count, len(exemplars))
                )
    return sorted(found, key=lambda t: (-t.taken, t.victim, t.taker))


def to_relearn(found: Sequence[Taking], new: set[str], limit: int) -> list[str]:
    """The settled classes to learn again beside the new ones: those a new class takes
    exemplars from, or that take a new class's exemplars; at most `limit`, most exemplars
    at stake first. Takings between two settled classes were not caused by this registration
    and are left alone; takings among new classes are already settled in their joint batch."""
    chosen: list[str] = []
    for taking in found:  # most taken first
        if taking.taker in new and taking.victim not in new:
            other = taking.victim
        elif taking.victim in new and taking.taker not in new:
            other = taking.taker
        else:
            continue
        if other not in chosen and len(chosen) < limit:
            chosen.append(other)
    return chosen


def impact_of(
    learned: str,
    found: Sequence[Taking],
    names: dict[str, str],
    relearned: set[str],
    after: Sequence[Taking] | None,
) -> list[dict[str, object]]:
    """What happened between the class `learned` and each other class when it was learned
    (`found`, measured before any re-learn): the exemplars it took of another ("took"), or that
    another took of its own ("taken_by"), whether that class was re-learned with it, and what is
    still taken after (`after`)."""
    remaining = {(t.victim, t.taker): t.taken for t in after or ()}
    items: list[dict[str, object]] = []
    for taking in found:
        if taking.taker == learned:
            other, direction = taking.victim, "took"
        elif taking.victim == learned:
            other, direction = taking.taker, "taken_by"
        else:
            continue
        if other not in names:
            continue
        item: dict[str, object] = {
            "class_id": other,
            "name": names[other],
            "direction": direction,
            "taken": taking.taken,
            "of": taking.of,
            "relearned": other in relearned,
        }
        if after is not None:
            item["remaining"] = remaining.get((taking.victim, taking.taker), 0)
        items.append(item)
    return items
