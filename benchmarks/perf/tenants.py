"""Part 5, tenants: /classify within one tenant when the matrix's classes are split over many
tenants, against the same count in one tenant, side by side."""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path
from typing import Any

from benchmarks.perf.harness import running, test_image
from benchmarks.perf.load import classify_alternating, classify_sequential
from benchmarks.perf.rows import insert_random_classes, wait_for_size
from service.db import make_engine, make_session_factory


def part_tenants(args: argparse.Namespace, workdir: Path, dim: int) -> dict[str, Any]:
    """/classify of one tenant among many against one tenant holding every class, side by side.

    Two servers, each with the same number of classes (`--tenant-classes`) in its one class
    matrix: on "one" they all belong to a single tenant; on "split" to `--tenants` tenants of
    equal size. Requests act within a tenant (`?tenant=`, as an admin key may; a client key's
    tenant takes the same path), rotating over the split server's tenants.
    """
    count, tenants = args.tenant_classes, args.tenants
    per_tenant = max(count // tenants, 1)
    image = test_image()
    with running(args, workdir) as one, running(args, workdir) as split:
        for server, tenant_of, tag in (
            (one, lambda i: "solo", "solo"),
            (split, lambda i: f"t{i // per_tenant:04d}", "split"),
        ):
            engine = make_engine(server.database_url)
            insert_random_classes(
                make_session_factory(engine),
                server.model_id,
                count,
                dim,
                tag,
                seed=count,
                tenant_of=tenant_of,
            )
            engine.dispose()
        # Until each matrix holds every row (the first scoped request also indexes the tenants).
        wait_for_size(one, count, "solo")
        wait_for_size(split, count, "split")
        per_request_s = max(classify_sequential(one.url, image, count=5)["p50_ms"] / 1000, 1e-4)
        pairs = int(min(max(args.seconds / (2 * per_request_s), 20), 2000))
        rounds = []
        for r in range(args.rounds):
            window = classify_alternating(
                one.url,
                split.url,
                image,
                count=pairs,
                reference_params=lambda i: {"tenant": "solo"},
                sized_params=lambda i: {"tenant": f"t{(i * 37) % tenants:04d}"},
            )
            rounds.append(
                {
                    "one": window["reference"],
                    "split": window["sized"],
                    "pair_ratio_median": window["pair_ratio_median"],
                    "ratio": window["sized"]["p50_ms"] / window["reference"]["p50_ms"],
                }
            )
            print(
                f"  round {r + 1}: split p50 {window['sized']['p50_ms']:.2f} ms vs one "
                f"{window['reference']['p50_ms']:.2f} ms (x{rounds[-1]['ratio']:.3f})",
                flush=True,
            )
    return {
        "classes": count,
        "tenants": tenants,
        "pairs": pairs,
        "rounds": rounds,
        "ratio": statistics.median(r["ratio"] for r in rounds),
    }
