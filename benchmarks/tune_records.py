"""The validation search's evaluations: one record per (setting, hints, K) over fixed
validation draws, memoised so a setting two stages try is evaluated once, and the rule that
accepts a setting over the current one."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from benchmarks.data import Task
from benchmarks.methods import Context, MethodSpec, evaluate
from benchmarks.metrics import mean_std, paired_difference
from liteembed import OptimizationConfig

# What every record's `changes` are relative to: the engine's current defaults.
BASE = OptimizationConfig()


@dataclass
class Record:
    stage: str
    label: str
    k: int
    hm: list[float]
    heldout: list[float]
    base_after: list[float]
    map: list[float]
    seconds_per_class: float
    changes: dict[str, Any] = field(default_factory=dict)
    use_hints: bool = False
    steps_run: float = 0.0
    config: OptimizationConfig | None = None

    @property
    def mean_hm(self) -> float:
        return sum(self.hm) / len(self.hm)

    def as_dict(self, reference: Record | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {
            "stage": self.stage,
            "label": self.label,
            "k": self.k,
            "changes": self.changes,
            "use_hints": self.use_hints,
            "hm": mean_std(self.hm),
            "heldout": mean_std(self.heldout),
            "base_after": mean_std(self.base_after),
            "map": mean_std(self.map) if self.map else None,
            "seconds_per_class": self.seconds_per_class,
            "steps_run_mean": self.steps_run,
            "hm_per_draw": self.hm,
        }
        if reference is not None and reference is not self and reference.k == self.k:
            out["delta_hm_vs_" + reference.label] = paired_difference(self.hm, reference.hm)
        return out


def changes_from_base(config: OptimizationConfig) -> dict[str, Any]:
    base, now = BASE.to_dict(), config.to_dict()
    return {k: v for k, v in now.items() if base[k] != v}


class Search:
    """Runs and memoises (config, hints, K) evaluations over a fixed set of validation draws."""

    def __init__(
        self, backend: Any, vocabulary: Any, task: Task, draws: dict[int, int], log: Any = print
    ) -> None:
        self.backend, self.vocabulary, self.task = backend, vocabulary, task
        self.ctx = Context.build(backend, task)
        self.draws = draws  # K -> number of draws
        self.log = log
        self.records: list[Record] = []
        self._memo: dict[tuple[OptimizationConfig, bool, int], Record] = {}

    def run(
        self, stage: str, label: str, config: OptimizationConfig, *, hints: bool = False, k: int = 4
    ) -> Record:
        key = (config, hints, k)
        if key in self._memo:
            old = self._memo[key]
            record = Record(
                stage,
                label,
                k,
                old.hm,
                old.heldout,
                old.base_after,
                old.map,
                old.seconds_per_class,
                changes_from_base(config),
                hints,
                old.steps_run,
                config,
            )
        else:
            draws = [(d, self.task.draw(d)) for d in range(self.draws[k])]
            spec = MethodSpec(label, "liteembed", config, hints)
            started = time.perf_counter()
            outs = evaluate(spec, self.ctx, self.backend, self.vocabulary, draws, k)
            record = Record(
                stage,
                label,
                k,
                [o.hm for o in outs],
                [o.heldout for o in outs],
                [o.base_after for o in outs],
                [o.map or 0.0 for o in outs],
                outs[0].seconds_per_class,
                changes_from_base(config),
                hints,
                sum(o.extra.get("steps_run_mean", 0) for o in outs) / len(outs),
                config,
            )
            self._memo[key] = record
            self.log(
                f"[{stage}] K={k} {label:<40} HM {100 * record.mean_hm:5.1f} "
                f"(held-out {100 * mean_std(record.heldout)[0]:4.1f}, steps "
                f"{record.steps_run:5.1f}, {time.perf_counter() - started:.1f}s)"
            )
        self.records.append(record)
        return record

    def fixed(self, stage: str, spec: MethodSpec, k: int = 4) -> Record:
        draws = [(d, self.task.draw(d)) for d in range(self.draws[k])]
        outs = evaluate(spec, self.ctx, self.backend, self.vocabulary, draws, k)
        record = Record(
            stage,
            spec.name,
            k,
            [o.hm for o in outs],
            [o.heldout for o in outs],
            [o.base_after for o in outs],
            [o.map for o in outs if o.map is not None],  # no text feature: no retrieval
            outs[0].seconds_per_class,
            dict(spec.options),
        )
        self.log(f"[{stage}] K={k} {spec.name:<40} HM {100 * record.mean_hm:5.1f}")
        self.records.append(record)
        return record


def better(candidate: Record, current: Record) -> tuple[bool, dict[str, float]]:
    """Accept only a paired gain larger than one standard error of the per-draw differences."""
    diff = paired_difference(candidate.hm, current.hm)
    se = diff["se"] if diff["se"] > 0 else 1e-9
    return diff["mean"] > 0 and diff["mean"] > se, diff


def best_of(records: Sequence[Record]) -> Record:
    return max(records, key=lambda r: r.mean_hm)
