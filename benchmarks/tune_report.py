"""The validation search's summary as markdown: its decisions, the chosen settings and every
evaluation."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def write_summary(result: dict[str, Any], path: Path) -> None:
    chosen = result["chosen"]
    lines = [
        "# Validation search (LiteEmbed defaults)",
        "",
        f"Validation held-out classes only ({', '.join(result['task']['heldout'])}) with "
        f"{result['task']['base']} base classes, joint classifier; draws per K: {result['draws']}. "
        "The test held-out classes were not used. HM = harmonic mean of held-out and base top-1; "
        "ΔHM = paired per-draw difference to the tuned TI reference, ± one standard error.",
        "",
        "## Decisions",
        "",
        *[f"- {d}" for d in result["decisions"]],
        "",
        "## Chosen",
        "",
        "- defaults (changes to the engine's current OptimizationConfig): "
        f"`{chosen['defaults_changes']}`"
        f", coarse hints: {chosen['use_hints']}; validation HM {pct(chosen['defaults_val_hm'])}",
        f"- full method (best setting of every part): `{chosen['full_changes']}`, hints: "
        f"{chosen['full_use_hints']}; validation HM {pct(chosen['full_val_hm'])}",
        f"- tuned TI reference: validation HM {pct(chosen['ti_val_hm'])}",
        "",
        "## Every evaluation",
        "",
        "| Stage | Setting | K | HM | Held-out | Base after | mAP | ΔHM vs tuned TI | steps run "
        "| s/class |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["records"]:
        delta = next((v for key, v in r.items() if key.startswith("delta_hm_vs_")), None)
        d = f"{100 * delta['mean']:+.2f} ± {100 * delta['se']:.2f}" if delta else ""
        lines.append(
            f"| {r['stage']} | {r['label']} | {r['k']} | {pct(r['hm'])} | {pct(r['heldout'])} | "
            f"{pct(r['base_after'])} | {pct(r['map'])} | {d} | {r['steps_run_mean']:.1f} | "
            f"{r['seconds_per_class']:.3f} |"
        )
    path.write_text("\n".join(lines) + "\n")


def pct(pair: Sequence[float]) -> str:
    if pair is None or math.isnan(pair[0]):
        return "n/a"
    return f"{100 * pair[0]:.1f} ± {100 * pair[1]:.1f}"
