"""Part 4, freshness: what /classify's per-request check of the class generation costs, with
and without it on one shared database, side by side."""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path
from typing import Any

from benchmarks.perf.harness import running, test_image
from benchmarks.perf.load import classify_alternating, classify_concurrent, classify_sequential
from benchmarks.perf.rows import replace_ready_classes, wait_for_size
from service.core.config import Settings
from service.db import migrate


def part_freshness(args: argparse.Namespace, workdir: Path, dim: int) -> dict[str, Any]:
    """/classify with the generation check against the same server without it, side by side."""
    database_url = args.database_url or f"sqlite:///{workdir / 'freshness.db'}"
    if not database_url.startswith("sqlite"):  # `serve` migrates only SQLite itself
        migrate(Settings(_env_file=None, database_url=database_url))  # type: ignore[call-arg]
    image = test_image()
    with (
        running(args, workdir, database_url=database_url) as checked,
        running(
            args, workdir, database_url=database_url, classify_checks_generation="false"
        ) as unchecked,
    ):
        replace_ready_classes(database_url, checked.model_id, 10, dim, "base")
        wait_for_size(checked, 10, "base")
        wait_for_size(unchecked, 10, "base")
        # Counts sized from the service's own latency, so each measurement lasts ~args.seconds.
        per_request_s = max(classify_sequential(checked.url, image, count=5)["p50_ms"] / 1000, 1e-4)
        pairs = int(min(max(args.seconds / (2 * per_request_s), 20), 2000))
        n16 = int(min(max(args.seconds / per_request_s, 64), 4000))
        rounds = []
        for r in range(args.rounds):
            c1 = classify_alternating(unchecked.url, checked.url, image, count=pairs)
            c16: dict[str, dict[str, float]] = {}
            order = [("on", checked), ("off", unchecked)]
            for key, server in order if r % 2 == 0 else order[::-1]:
                c16[key] = classify_concurrent(server.url, image, concurrency=16, count=n16)
            rounds.append(
                {
                    "c1_on": c1["sized"],
                    "c1_off": c1["reference"],
                    "c1_pair_ratio_median": c1["pair_ratio_median"],
                    "ratio_c1": c1["sized"]["p50_ms"] / c1["reference"]["p50_ms"],
                    "c16_on": c16["on"],
                    "c16_off": c16["off"],
                    "throughput_ratio_c16": c16["on"]["throughput_per_s"]
                    / c16["off"]["throughput_per_s"],
                }
            )
            last = rounds[-1]
            print(
                f"  round {r + 1}: c1 p50 {c1['sized']['p50_ms']:.2f} vs "
                f"{c1['reference']['p50_ms']:.2f} ms (x{last['ratio_c1']:.3f}); c16 "
                f"{c16['on']['throughput_per_s']:.1f} vs {c16['off']['throughput_per_s']:.1f}/s "
                f"(x{last['throughput_ratio_c16']:.3f})",
                flush=True,
            )
    return {
        "database": database_url.split(":", 1)[0].split("+", 1)[0],
        "classes": 10,
        "pairs_c1": pairs,
        "requests_c16": n16,
        "rounds": rounds,
        "ratio_c1": statistics.median(r["ratio_c1"] for r in rounds),
        "throughput_ratio_c16": statistics.median(r["throughput_ratio_c16"] for r in rounds),
    }
