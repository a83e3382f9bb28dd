"""POST -> ready of the training part's 4-shot class under two sets of training options, side by
side: each run a fresh `liteembed serve` (the embedded worker), its warm-up class first, then the
4-shot class, then four classes posted together, as `benchmarks.perf --parts training` does; the
two sides alternate in the given order (ABBA...) so drift of a shared machine hits both alike.

    python -m benchmarks.perf.training_abba --model ViT-B-32 --torch-threads 1 \\
        --a '{"view_precision": "model"}' --b '{"view_precision": "auto"}' --order ABBAAB \\
        --out benchmarks/results/training-views-abba-ViT-B-32.json
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.perf.cli import add_server_arguments
from benchmarks.perf.harness import machine, running
from benchmarks.perf.training import post_and_wait


def one_run(args: argparse.Namespace, options: str, seed: int) -> dict[str, Any]:
    """POST -> ready on a fresh server trained with `options` (OptimizationConfig JSON)."""
    with (
        tempfile.TemporaryDirectory() as workdir,
        running(args, Path(workdir), train_options=options) as server,
    ):
        post_and_wait(server.url, ["warmup"], 90, timeout=1800)
        load = [round(x, 2) for x in os.getloadavg()]
        one = post_and_wait(server.url, ["zorb"], seed, timeout=1800)
        four = post_and_wait(server.url, ["quib", "plax", "vorn", "gleb"], 20 + seed, 3600)
    return {
        "load_average_at_start": load,
        "seconds": one["seconds_all"],
        "four_posted_seconds": four["seconds_all"],
    }


def summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per side the median; the B/A ratio of the medians and of each adjacent A-B pair."""
    by_side = {s: [r for r in runs if r["side"] == s] for s in "AB"}
    medians = {
        s: {k: statistics.median(r[k] for r in rows) for k in ("seconds", "four_posted_seconds")}
        for s, rows in by_side.items()
        if rows
    }
    pairs = [
        (runs[i], runs[i + 1])
        for i in range(0, len(runs) - 1, 2)
        if {runs[i]["side"], runs[i + 1]["side"]} == {"A", "B"}
    ]
    ratio = None
    if len(medians) == 2:
        ratio = medians["B"]["seconds"] / medians["A"]["seconds"]
    seconds = [{r["side"]: r["seconds"] for r in pair} for pair in pairs]
    pair_ratios = [by_side["B"] / by_side["A"] for by_side in seconds]
    return {"medians": medians, "ratio_b_over_a": ratio, "pair_ratios": pair_ratios}


def markdown(result: dict[str, Any]) -> str:
    s = result["summary"]
    lines = [
        f"# Training POST -> ready, side by side ({result['model']}, "
        f"{result['torch_threads']} torch thread(s))",
        "",
        f"Command: `{result['command']}`. Machine: {result['machine']}.",
        f"A = `{result['a']}`, B = `{result['b']}`.",
        "",
        "| run | side | load average at start | POST -> ready s | 4 posted together s |",
        "|---|---|---|---:|---:|",
    ]
    for i, r in enumerate(result["runs"], 1):
        lines.append(
            f"| {i} | {r['side']} | {r['load_average_at_start']} | {r['seconds']:.2f} | "
            f"{r['four_posted_seconds']:.2f} |"
        )
    lines.append("")
    for side, m in s["medians"].items():
        seconds, four = m["seconds"], m["four_posted_seconds"]
        lines.append(f"- {side}: median {seconds:.2f} s; 4 posted together {four:.2f} s")
    if s["ratio_b_over_a"] is not None:
        pairs = ", ".join(f"x{p:.2f}" for p in s["pair_ratios"])
        lines.append(f"- B / A (medians): **x{s['ratio_b_over_a']:.2f}**; adjacent pairs: {pairs}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_server_arguments(parser, torch_threads=1)
    parser.set_defaults(model="ViT-B-32")
    parser.add_argument("--a", default="{}", help="side A's training options (JSON)")
    parser.add_argument("--b", default="{}", help="side B's training options (JSON)")
    parser.add_argument("--order", default="ABBAAB", help="the runs' sides, in order")
    parser.add_argument("--out", type=Path, required=True, help="JSON; the table beside it (.md)")
    args = parser.parse_args(argv)
    for side in (args.a, args.b):
        json.loads(side)  # fail before any server starts
    if not args.order or set(args.order) - {"A", "B"}:
        parser.error("--order: a string of A and B")
    runs = []
    for index, side in enumerate(args.order):
        run = {"side": side, **one_run(args, args.a if side == "A" else args.b, 1 + index)}
        runs.append(run)
        print(json.dumps(run), flush=True)
    env = machine()
    result = {
        "model": args.model,
        "torch_threads": args.torch_threads,
        "machine": f"{env['cpu']}, {env['cores']} cores, torch {env['torch']}",
        "a": args.a,
        "b": args.b,
        "runs": runs,
        "summary": summary(runs),
        "command": "python -m benchmarks.perf.training_abba "
        + shlex.join(sys.argv[1:] if argv is None else argv),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    args.out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
