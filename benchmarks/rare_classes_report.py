"""The rare-class benchmark's report: per method and K the mean ± std over draws and the
paired differences against the reference row, as JSON summary, markdown and plot."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from benchmarks.metrics import mean_std, paired_difference

REFERENCE = "textual-inversion"  # paired differences are taken against this row
# A claimed difference between two rows needs at least this many paired draws.
MIN_DRAWS = 10


def summarise(report: dict[str, Any]) -> dict[str, dict[str, dict[str, Any]]]:
    """Mean ± std over draws per method and K, and the paired ΔHM against textual inversion."""
    summary: dict[str, dict[str, dict[str, Any]]] = {}
    results = report["results"]
    for method, per_k in results.items():
        summary[method] = {}
        for k, outcomes in per_k.items():
            row: dict[str, Any] = {}
            for key in ("heldout", "base_after", "base_before", "hm", "map", "seconds_per_class"):
                values = [o[key] for o in outcomes if o[key] is not None]
                row[key] = mean_std(values) if values else None
            taken = [o.get("base_taken", {}) for o in outcomes]
            if any(taken):
                names = {n for t in taken for n in t}
                means = {n: sum(t.get(n, 0.0) for t in taken) / len(taken) for n in names}
                row["base_taken"] = dict(sorted(means.items(), key=lambda item: -item[1]))
            lookalike = [_mean_lookalike(o) for o in outcomes]
            if all(v is not None for v in lookalike) and lookalike:
                row["lookalike"] = mean_std(lookalike)
            if REFERENCE in results and k in results[REFERENCE] and method != REFERENCE:
                reference = results[REFERENCE][k]
                row["delta_hm_vs_ti"] = paired_difference(
                    [o["hm"] for o in outcomes], [o["hm"] for o in reference]
                )
                reference_lookalike = [_mean_lookalike(o) for o in reference]
                if "lookalike" in row and all(v is not None for v in reference_lookalike):
                    row["delta_lookalike_vs_ti"] = paired_difference(lookalike, reference_lookalike)
            summary[method][k] = row
    return summary


def _mean_lookalike(outcome: dict[str, Any]) -> float | None:
    """One draw's look-alike confusion: the mean over the held-out classes that have one."""
    rates = outcome.get("lookalike") or {}
    return sum(rates.values()) / len(rates) if rates else None


def lookalike_table(report: dict[str, Any], k: int) -> str | None:
    """Held-out test images taken for their look-alike base classes (lower is better)."""
    rows = [
        (method, per_k[str(k)])
        for method, per_k in report["summary"].items()
        if str(k) in per_k and per_k[str(k)].get("lookalike")
    ]
    if not rows:
        return None
    lines = [
        f"| Method (K={k}) | Taken for a look-alike | Δ vs TI (paired, ± SE) | draws lower |",
        "|---|---|---|---|",
    ]
    for method, row in rows:
        delta = row.get("delta_lookalike_vs_ti")
        delta_s = _delta_cell(delta, method)
        lower = f"{delta['lost']:.0f}/{delta['n']:.0f}" if delta else ""
        lines.append(f"| {method} | {_pct(row['lookalike'])} | {delta_s} | {lower} |")
    return "\n".join(lines)


def _delta_cell(delta: dict[str, float] | None, method: str) -> str:
    """A paired difference to textual inversion as a table cell (± its standard error)."""
    if delta:
        return f"{100 * delta['mean']:+.1f} ± {100 * delta['se']:.1f}"
    return "0 (ref.)" if method == REFERENCE else "n/a"


def base_taken_lines(report: dict[str, Any], k: int, top: int = 8) -> list[str]:
    """Per method, the base classes that lost the most test images to the new classes (mean over
    draws) and the share of that loss that fell on the held-out classes' look-alikes."""
    lookalikes = {b for bases in report["task"].get("lookalikes", {}).values() for b in bases}
    lines = []
    for method, per_k in report["summary"].items():
        taken = per_k.get(str(k), {}).get("base_taken")
        if not taken:
            continue
        worst = ", ".join(f"{n} {100 * v:.0f} %" for n, v in list(taken.items())[:top])
        share = sum(v for n, v in taken.items() if n in lookalikes) / sum(taken.values())
        lines.append(
            f"- {method}: {worst}; {100 * share:.0f} % of the loss on look-alike base classes"
        )
    return lines


def _pct(pair: Any) -> str:
    if pair is None or (isinstance(pair, tuple | list) and math.isnan(pair[0])):
        return "n/a"
    return f"{100 * pair[0]:.1f} ± {100 * pair[1]:.1f}"


def markdown_table(report: dict[str, Any], k: int) -> str:
    summary = report["summary"]
    plug = {m["name"]: m["plug_and_play"] for m in report["methods"]}
    lines = [
        f"| Method (K={k}) | Plug-and-play | **HM** | Held-out | Base after | Base before | "
        "mAP (held-out → gallery) | ΔHM vs TI (paired, ± SE) | draws won | s/class |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for method, per_k in summary.items():
        row = per_k.get(str(k))
        if row is None:
            continue
        delta = row.get("delta_hm_vs_ti")
        delta_s = _delta_cell(delta, method)
        won = f"{delta['won']:.0f}/{delta['n']:.0f}" if delta else ""
        secs = row["seconds_per_class"]
        lines.append(
            f"| {method} | {'yes' if plug[method] else 'no'} | **{_pct(row['hm'])}** | "
            f"{_pct(row['heldout'])} | {_pct(row['base_after'])} | {_pct(row['base_before'])} | "
            f"{_pct(row['map']) if plug[method] else 'n/a (no text feature)'} | {delta_s} | "
            f"{won} | {secs[0]:.3f} |"
        )
    return "\n".join(lines)


def write_markdown(report: dict[str, Any], path: Path, headline_k: int = 4) -> None:
    task = report["task"]
    ks = [int(k) for k in report["shots"]]
    parts = [
        f"# Rare-class benchmark: {task['name']}",
        "",
        f"Model `{report['model']}`; {len(task['base'])} base + {len(task['heldout'])} held-out "
        f"classes ({', '.join(task['heldout'])}), one joint classifier; {report['draws']} support "
        f"draws per K; percentages are mean ± std over draws; ΔHM is the paired per-draw "
        "difference to textual inversion, ± its standard error, with the draws it won. "
        + (
            ""
            if report["draws"] >= MIN_DRAWS
            else f"**Fewer than {MIN_DRAWS} draws: no difference here is a claim.** "
        )
        + "Held-out names mined as negatives: "
        + ("no" if report.get("hide_heldout_names", True) else "**yes**")
        + ". Base before = zero-shot base "
        "accuracy among base classes only. mAP: each held-out class's text feature ranks the "
        "whole test gallery. s/class: optimisation wall time per class, batched over classes "
        "and draws (one class alone at K=4: "
        f"{report.get('single_class_seconds', math.nan):.2f} s).",
        "",
        f"LiteEmbed settings: {report['chosen_source']}. The defaults of that file are the row "
        f"**{report.get('defaults_row', 'liteembed (defaults)')}**; linear probe C = "
        f"{report.get('linear_probe_c', 'n/a')}; Tip-Adapter: "
        f"{report.get('tip_adapter', 'published alpha = 1, beta = 5.5')}, the model's logit "
        "scale.",
        "",
    ]
    order = [headline_k] + [k for k in ks if k != headline_k] if headline_k in ks else ks
    for k in order:
        parts += [f"## K = {k}", "", markdown_table(report, k), ""]
        confusion = lookalike_table(report, k)
        if confusion is not None:
            parts += [
                f"Look-alike confusion, K = {k}: the share of the held-out test images of the "
                f"{len(report['task'].get('lookalikes', {}))} classes with a look-alike that "
                "are classified as one of their look-alike base classes (mean over those "
                "classes, then mean ± std over draws; lower is better).",
                "",
                confusion,
                "",
            ]
        taken_lines = base_taken_lines(report, k)
        if taken_lines:
            parts += [
                f"Base images taken by the new classes, K = {k}: the base classes losing the most "
                "test images to a held-out class (share of their images, mean over draws):",
                "",
                *taken_lines,
                "",
            ]
    if report.get("skipped_shots"):
        parts.append(f"Skipped K (too few images per class): {report['skipped_shots']}")
    path.write_text("\n".join(parts) + "\n")


def write_plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = report["summary"]
    fig, axes = plt.subplots(1, 3, figsize=(16, 5))
    panels = [
        ("hm", "Harmonic mean (held-out, base after)"),
        ("heldout", "Held-out top-1"),
        ("map", "Held-out text→image mAP"),
    ]
    for ax, (key, title) in zip(axes, panels, strict=True):
        for method, per_k in summary.items():
            ks = sorted(int(k) for k in per_k if per_k[k][key] is not None)
            if not ks:
                continue
            means = [100 * per_k[str(k)][key][0] for k in ks]
            stds = [100 * per_k[str(k)][key][1] for k in ks]
            style = "-" if method.startswith(("liteembed", "textual")) else "--"
            ax.errorbar(
                ks,
                means,
                yerr=stds,
                label=method,
                marker="o",
                linestyle=style,
                capsize=3,
                linewidth=1.5,
                markersize=4,
            )
        ax.set_xscale("log", base=2)
        ax.set_xticks([int(k) for k in report["shots"]])
        ax.set_xticklabels([str(k) for k in report["shots"]])
        ax.set_xlabel("shots per held-out class (K)")
        ax.set_ylabel("%")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, loc="lower right")
    fig.suptitle(
        f"{report['task']['name']} ({report['model']}), mean ± std over {report['draws']} draws"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
