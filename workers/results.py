"""What a training run stores: its classes as row values, and what each took from the others."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from workers.impact import ScoredClass, Taking, impact_of
from workers.settled import SettledClass


@dataclass(frozen=True)
class KeptResults:
    """What a run stores: the new classes, the ready classes re-learned beside them, and each
    new class's impact on the others."""

    new: dict[str, Any]  # class id -> LearnedClass
    relearned: dict[str, Any]  # class id -> LearnedClass
    impact: dict[str, list[dict[str, Any]]]


def scored_classes(settled: list[SettledClass], learned: dict[str, Any]) -> list[ScoredClass]:
    classes = [
        ScoredClass(one.class_id, one.name, one.feature, as_exemplars(one.exemplars))
        for one in settled
    ]
    for class_id, result in learned.items():
        classes.append(
            ScoredClass(
                class_id,
                result.name,
                as_float32(result.text_feature),
                as_exemplars(result.exemplar_features),
            )
        )
    return classes


def at_stake(found: list[Taking], new: set[str], others: set[str]) -> int:
    """Exemplars taken between a new class and one of `others`, either way."""
    return sum(
        t.taken
        for t in found
        if (t.taker in new and t.victim in others) or (t.victim in new and t.taker in others)
    )


def impacts(
    learned: dict[str, Any],
    before: list[Taking],
    names: dict[str, str],
    relearned: set[str],
    after: list[Taking] | None,
) -> dict[str, list[dict[str, Any]]]:
    return {i: impact_of(i, before, names, relearned, after) for i in learned}


def learned_values(learned: Any) -> dict[str, Any]:
    """A LearnedClass as the columns of its row."""
    exemplars = learned.exemplar_features
    return {
        "text_feature": as_float32(learned.text_feature),
        "token_embedding": as_float32(learned.token_embedding),
        "templates": learned.templates,
        "diagnostics": learned.diagnostics,
        "threshold": learned.threshold,
        "exemplar_features": None if exemplars is None else as_exemplars(exemplars),
    }


def as_exemplars(value: Any) -> np.ndarray:
    if value is None:
        return np.zeros((0, 0), dtype=np.float32)
    if hasattr(value, "detach"):
        value = value.detach().float().cpu().numpy()
    return np.ascontiguousarray(value, dtype=np.float32)


def as_float32(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):
        value = value.detach().float().cpu().numpy()
    return np.ascontiguousarray(np.asarray(value, dtype=np.float32).reshape(-1))
