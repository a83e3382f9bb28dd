"""Per class, what the second pass (liteembed.reweigh) does, on a validation split: each draw's
classes learned with the benchmark settings' defaults without the second pass, and again with it
taking every second word that keeps at least as much of its evidence (no gain required, no
nearness limit), so that each class the pass learns again shows both words side by side: the
share of its evidence each keeps, their cosine, the class's own test images and the base images it
takes under either word, and the draw's HM. This is the table the second pass's nearness limit
(`reweigh_min_cosine`) was read from.

    python -m benchmarks.second_pass_classes --split val_heldout --draws 10
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch

from benchmarks.data import world_task
from benchmarks.evidence_search import search_inputs, variant_spec
from benchmarks.methods import Context, Outcome, evaluate

RESULTS_DIR = Path(__file__).parent / "results"
WITHOUT = "defaults+reweigh_kept=0"
# Every second word that keeps no less of its evidence replaces the first.
EVERY = "defaults+reweigh_kept=0.85+reweigh_min_gain=0+reweigh_min_cosine=-1"
VALIDATION_SPLITS = ("val_heldout", "val_lookalike")


def class_rows(draw: int, without: Outcome, every: Outcome) -> list[dict[str, Any]]:
    """One row per class the second pass learned again in this draw."""
    rows = []
    for name, record in sorted((every.extra.get("second_pass") or {}).items()):
        rows.append(
            {
                "draw": draw,
                "class": name,
                "kept_before": record["kept_before"],
                "kept_after": record["kept_after"],
                "cosine": record["cosine"],
                "replaced": record["replaced"],
                "own_without": without.per_class.get(name),
                "own_with": every.per_class.get(name),
                "takes_without": sum(without.taken_by.get(name, {}).values()),
                "takes_with": sum(every.taken_by.get(name, {}).values()),
                "hm_without": without.hm,
                "hm_with": every.hm,
            }
        )
    return rows


def markdown(result: dict[str, Any]) -> str:
    lines = [
        f"# The second pass per class ({result['model']}, {result['split']}, K={result['shots']}, "
        f"{result['draws']} draws)",
        "",
        f"Command: `{result['command']}`. Without: `{WITHOUT}`; with: `{EVERY}` (every second word "
        "that keeps no less of its evidence replaces the first). Own: the class's test images "
        "it gets; takes: base images it takes (sum of per-class shares); ΔHM: the draw's HM with "
        "minus without (every class of the draw).",
        "",
        "| draw | class | evidence kept (first → second) | cosine | replaced | own without / with "
        "| takes without / with | ΔHM |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['draw']} | {r['class']} | {r['kept_before']:.2f} → {r['kept_after']:.2f} | "
            f"{r['cosine']:.3f} | {'yes' if r['replaced'] else 'no'} | "
            f"{100 * r['own_without']:.0f} / {100 * r['own_with']:.0f} % | "
            f"{r['takes_without']:.2f} / {r['takes_with']:.2f} | "
            f"{100 * (r['hm_with'] - r['hm_without']):+.2f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="liteembed-mini-v2")
    parser.add_argument("--split", default="val_heldout", choices=VALIDATION_SPLITS)
    parser.add_argument("--draws", type=int, default=10)
    parser.add_argument("--shots", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cache-dir", type=Path, default=Path(".liteembed-cache"))
    parser.add_argument("--out", type=Path, default=None, help="JSON; the table beside it (.md)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    backend, vocabulary, bank, previous = search_inputs(args.model, args.cache_dir)
    specs = [variant_spec(v, previous, bank) for v in (WITHOUT, EVERY)]
    task = world_task(backend, args.split)
    ctx = Context.build(backend, task)
    rows: list[dict[str, Any]] = []
    for index in range(args.draws):
        draw = [(index, task.draw(index))]
        without, every = (evaluate(s, ctx, backend, vocabulary, draw, args.shots)[0] for s in specs)
        rows += class_rows(index, without, every)
        print(f"draw {index}: {len(rows)} rows so far", flush=True)
    result = {
        "model": backend.model_id,
        "split": args.split,
        "shots": args.shots,
        "draws": args.draws,
        "rows": rows,
        "command": " ".join(
            ["python -m benchmarks.second_pass_classes", *(sys.argv[1:] if argv is None else argv)]
        ),
    }
    out = args.out or RESULTS_DIR / f"second_pass_classes-{args.split}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
