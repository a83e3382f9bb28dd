"""Part 1, classify: the bare model (preprocess + encode in this process) at batch 1 and 32
against POST /v1/classify at concurrency 1 and 16, in interleaved rounds."""

from __future__ import annotations

import argparse
import statistics
from typing import Any

from benchmarks.perf.harness import Server, test_image
from benchmarks.perf.load import bare_encode, classify_concurrent, classify_sequential, decode_ms
from benchmarks.perf.rows import replace_ready_classes, wait_for_size


def part_classify(args: argparse.Namespace, server: Server, backend: Any) -> dict[str, Any]:
    image = test_image()
    dim = int(backend.embed_dim)
    replace_ready_classes(server.database_url, server.model_id, 10, dim, "base")
    wait_for_size(server, 10, "base")
    # Counts sized so each measurement lasts a few seconds on this machine.
    probe = bare_encode(backend, image, batch=1, count=3)
    per_image_s = max(probe["p50_ms"] / 1000, 1e-4)
    n1 = int(min(max(args.seconds / per_image_s, 20), 2000))
    n32 = int(min(max(args.seconds / (per_image_s * 32), 3), 200))
    n16 = int(min(max(args.seconds / per_image_s, 64), 4000))
    rounds = []
    for r in range(args.rounds):
        bare1 = bare_encode(backend, image, batch=1, count=n1)
        svc1 = classify_sequential(server.url, image, count=n1)
        bare32 = bare_encode(backend, image, batch=32, count=n32)
        svc16 = classify_concurrent(server.url, image, concurrency=16, count=n16)
        rounds.append(
            {
                "bare_b1": bare1,
                "service_c1": svc1,
                "bare_b32": bare32,
                "service_c16": svc16,
                "overhead_c1": svc1["p50_ms"] / bare1["p50_ms"] - 1,
                "throughput_ratio_c16": svc16["throughput_per_s"] / bare32["throughput_per_s"],
            }
        )
        print(
            f"  round {r + 1}: bare b1 {bare1['p50_ms']:.2f} ms, service c1 "
            f"{svc1['p50_ms']:.2f} ms; bare b32 {bare32['throughput_per_s']:.1f}/s, service c16 "
            f"{svc16['throughput_per_s']:.1f}/s",
            flush=True,
        )
    return {
        "image": {"format": "JPEG", "size": [256, 256], "bytes": len(image)},
        "decode_ms": decode_ms(image),
        "rounds": rounds,
        "overhead_c1": statistics.median(r["overhead_c1"] for r in rounds),
        "throughput_ratio_c16": statistics.median(r["throughput_ratio_c16"] for r in rounds),
        "batch_settings": {"max_batch": 32, "max_wait_ms": 5.0},
    }
