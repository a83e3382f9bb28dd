"""Part 7, versus: this checkout's server against another checkout's (a baseline commit), side
by side, to measure one change of the request path:

    git worktree add /tmp/baseline <commit>
    python -m benchmarks.perf --model liteembed-tiny --torch-threads 1 --parts versus \\
        --baseline /tmp/baseline

Two servers with the same settings, each on its own SQLite file with 10 ready classes. At
concurrency 1 the lean client alternates raw-body /classify requests (`--versus-request
embeddings`: /v1/embeddings with the peer part's OpenAI-shaped body, the image a data URI)
between them (the p50s come
from the same window; the median per-pair ratio is given too); at concurrency 16 the two are
loaded in turn, the order flipping each round. Ratios are this checkout's over the baseline's."""

from __future__ import annotations

import argparse
import statistics
import subprocess
from pathlib import Path
from typing import Any

from benchmarks.perf.harness import running, test_image
from benchmarks.perf.load import lean_alternating, lean_concurrent
from benchmarks.perf.peer import our_embeddings_request
from benchmarks.perf.rows import replace_ready_classes, wait_for_size


def part_versus(args: argparse.Namespace, workdir: Path, dim: int) -> dict[str, Any]:
    baseline: Path = args.baseline.resolve()
    image = test_image()
    kind = getattr(args, "versus_request", "classify")
    build = our_embeddings_request if kind == "embeddings" else None
    pairs = max(int(args.seconds * 400), 100)
    n16 = max(int(args.seconds * 600), 200)
    with running(args, workdir, code=baseline) as before, running(args, workdir) as after:
        for server in (before, after):
            replace_ready_classes(server.database_url, server.model_id, 10, dim, "base")
            wait_for_size(server, 10, "base")
        rounds = []
        for r in range(args.rounds):
            c1 = lean_alternating(before.url, after.url, image, count=pairs, build=build)
            c16: dict[str, dict[str, float]] = {}
            order = [("before", before), ("after", after)]
            for key, server in order if r % 2 == 0 else order[::-1]:
                c16[key] = lean_concurrent(
                    server.url, image, concurrency=16, count=n16, raw=True, build=build
                )
            row = {
                "c1_before": c1["reference"],
                "c1_after": c1["other"],
                "c1_p50_diff_ms": c1["other"]["p50_ms"] - c1["reference"]["p50_ms"],
                "c1_pair_ratio_median": c1["pair_ratio_median"],
                "c16_before": c16["before"],
                "c16_after": c16["after"],
                "throughput_ratio_c16": c16["after"]["throughput_per_s"]
                / c16["before"]["throughput_per_s"],
            }
            rounds.append(row)
            print(
                f"  round {r + 1}: c1 p50 {c1['reference']['p50_ms']:.2f} -> "
                f"{c1['other']['p50_ms']:.2f} ms (pair ratio {row['c1_pair_ratio_median']:.3f}); "
                f"c16 {c16['before']['throughput_per_s']:.0f} -> "
                f"{c16['after']['throughput_per_s']:.0f} img/s "
                f"(x{row['throughput_ratio_c16']:.2f})",
                flush=True,
            )
    keys = ("c1_p50_diff_ms", "c1_pair_ratio_median", "throughput_ratio_c16")
    return {
        "baseline": str(baseline),
        "baseline_commit": _commit(baseline),
        "request": kind,
        "pairs_c1": pairs,
        "requests_c16": n16,
        "rounds": rounds,
        **{key: statistics.median(r[key] for r in rounds) for key in keys},
    }


def _commit(checkout: Path) -> str | None:
    found = subprocess.run(
        ["git", "-C", str(checkout), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    )
    return found.stdout.strip() or None
