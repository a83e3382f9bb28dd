"""Part 1, classify: the bare model against POST /v1/classify, in interleaved rounds.

Two floors, both in this process with the server's torch threads: the bare encode (preprocess +
encode of an image decoded beforehand) and the bare pipeline (decode + preprocess + encode from
the JPEG's bytes), at batch 1 and 32. The service is loaded by the lean client
(`benchmarks/perf/lean_http.py`) at concurrency 1 and 16, with the image as the raw body
(`Content-Type: image/jpeg`) and as a multipart form; and, for continuity with earlier results,
by httpx with a multipart form."""

from __future__ import annotations

import argparse
import statistics
from typing import Any

from benchmarks.perf.harness import Server, test_image
from benchmarks.perf.load import (
    bare_encode,
    bare_pipeline,
    classify_concurrent,
    classify_sequential,
    decode_ms,
    lean_concurrent,
    lean_sequential,
)
from benchmarks.perf.rows import replace_ready_classes, wait_for_size


def part_classify(args: argparse.Namespace, server: Server, backend: Any) -> dict[str, Any]:
    image = test_image()
    dim = int(backend.embed_dim)
    replace_ready_classes(server.database_url, server.model_id, 10, dim, "base")
    wait_for_size(server, 10, "base")
    # Counts sized so each measurement lasts a few seconds on this machine.
    probe = bare_pipeline(backend, image, batch=1, count=3)
    per_image_s = max(probe["p50_ms"] / 1000, 1e-4)
    n1 = int(min(max(args.seconds / per_image_s, 20), 3000))
    n32 = int(min(max(args.seconds / (per_image_s * 32), 3), 200))
    n16 = int(min(max(args.seconds / per_image_s, 64), 6000))
    rounds = []
    for r in range(args.rounds):
        row: dict[str, Any] = {
            "bare_b1": bare_encode(backend, image, batch=1, count=n1),
            "bare_b1_full_size": bare_encode(backend, image, batch=1, count=n1, full_size=True),
            "pipeline_b1": bare_pipeline(backend, image, batch=1, count=n1),
            "service_c1": lean_sequential(server.url, image, count=n1, raw=True),
            "service_c1_multipart": lean_sequential(server.url, image, count=n1, raw=False),
            "service_c1_httpx": classify_sequential(server.url, image, count=n1),
            "bare_b32": bare_encode(backend, image, batch=32, count=n32),
            "bare_b32_full_size": bare_encode(backend, image, batch=32, count=n32, full_size=True),
            "pipeline_b32": bare_pipeline(backend, image, batch=32, count=n32),
            "service_c16": lean_concurrent(server.url, image, concurrency=16, count=n16, raw=True),
            "service_c16_multipart": lean_concurrent(
                server.url, image, concurrency=16, count=n16, raw=False
            ),
            "service_c16_httpx": classify_concurrent(server.url, image, concurrency=16, count=n16),
        }
        c1, bare1, pipe1 = row["service_c1"], row["bare_b1"], row["pipeline_b1"]
        c16, bare32, pipe32 = row["service_c16"], row["bare_b32"], row["pipeline_b32"]
        row.update(
            {
                # The headline: what the server adds to the bare encode of one image, in ms and
                # as a ratio; and the same against the bare pipeline (decoding included).
                "overhead_c1_ms": c1["p50_ms"] - bare1["p50_ms"],
                "overhead_c1": c1["p50_ms"] / bare1["p50_ms"] - 1,
                "overhead_c1_vs_pipeline_ms": c1["p50_ms"] - pipe1["p50_ms"],
                "throughput_ratio_c16": c16["throughput_per_s"] / bare32["throughput_per_s"],
                # Against the floor as measured before (open_clip's preprocess of the full-size
                # image), the one earlier results and targets were stated against.
                "overhead_c1_ms_full_size": c1["p50_ms"] - row["bare_b1_full_size"]["p50_ms"],
                "throughput_ratio_c16_full_size": c16["throughput_per_s"]
                / row["bare_b32_full_size"]["throughput_per_s"],
                "throughput_ratio_c16_vs_pipeline": c16["throughput_per_s"]
                / pipe32["throughput_per_s"],
            }
        )
        rounds.append(row)
        print(
            f"  round {r + 1}: c1 p50 bare {bare1['p50_ms']:.2f} / pipeline "
            f"{pipe1['p50_ms']:.2f} / service raw {c1['p50_ms']:.2f} ms (multipart "
            f"{row['service_c1_multipart']['p50_ms']:.2f}, httpx "
            f"{row['service_c1_httpx']['p50_ms']:.2f}); c16 bare b32 "
            f"{bare32['throughput_per_s']:.0f} / pipeline {pipe32['throughput_per_s']:.0f} / "
            f"service raw {c16['throughput_per_s']:.0f} img/s (multipart "
            f"{row['service_c16_multipart']['throughput_per_s']:.0f}, httpx "
            f"{row['service_c16_httpx']['throughput_per_s']:.0f})",
            flush=True,
        )
    keys = (
        "overhead_c1_ms",
        "overhead_c1",
        "overhead_c1_vs_pipeline_ms",
        "throughput_ratio_c16",
        "throughput_ratio_c16_vs_pipeline",
        "overhead_c1_ms_full_size",
        "throughput_ratio_c16_full_size",
    )
    return {
        "image": {"format": "JPEG", "size": [256, 256], "bytes": len(image)},
        "decode_ms": decode_ms(image, min_side=backend.decode_side),
        "rounds": rounds,
        **{key: statistics.median(r[key] for r in rounds) for key in keys},
        "batch_settings": {"max_batch": 32, "max_wait_ms": 5.0},
        "client": "lean (benchmarks/perf/lean_http.py); httpx rows for comparison",
    }
