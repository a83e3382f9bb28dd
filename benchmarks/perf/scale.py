"""Part 3, scale: /classify latency and the API's memory per number of ready classes, each size
measured side by side with a reference server; and the latency while the largest matrix
changes."""

from __future__ import annotations

import argparse
import threading
import time
from collections.abc import Callable
from typing import Any

from benchmarks.perf.harness import Server, rss_mb, test_image
from benchmarks.perf.load import classify_alternating, classify_sequential
from benchmarks.perf.rows import (
    delete_one_class,
    insert_random_classes,
    replace_ready_classes,
    wait_for_size,
)
from service.db import make_engine, make_session_factory


def part_scale(
    args: argparse.Namespace, server: Server, reference: Server, dim: int
) -> dict[str, Any]:
    """Latency and memory per size on `server`, each measured side by side with `reference`."""
    image = test_image(seed=3)
    first = args.sizes[0]
    # The reference holds the first size for the whole part: it is the baseline every size is
    # divided by, measured in the same window as that size.
    replace_ready_classes(reference.database_url, reference.model_id, first, dim, "ref")
    wait_for_size(reference, first, "ref")
    rows = []
    probe = classify_sequential(server.url, image, count=5)
    # `count` pairs per size, so each server gets as many requests as the old one-server
    # measurement did; the window lasts about twice `--seconds`.
    count = int(min(max(args.seconds / (probe["p50_ms"] / 1000), 20), 1000))
    for size in args.sizes:
        tag = f"s{size}"
        t = time.perf_counter()
        replace_ready_classes(server.database_url, server.model_id, size, dim, tag)
        insert_s = time.perf_counter() - t
        visible_s = wait_for_size(server, size, tag)
        window = classify_alternating(reference.url, server.url, image, count=count)
        sized, ref = window["sized"], window["reference"]
        rows.append(
            {
                "classes": size,
                "c1": sized,
                "reference_c1": ref,
                # The headline: p50s from the same window (paired in time, not across runs).
                "ratio_to_first": sized["p50_ms"] / ref["p50_ms"],
                "pair_ratio_median": window["pair_ratio_median"],
                "pairs": window["pairs"],
                "rss_mb": rss_mb(server.pid),
                "reference_rss_mb": rss_mb(reference.pid),
                "insert_s": insert_s,
                "visible_after_s": visible_s,
            }
        )
        print(
            f"  {size} classes: p50 {sized['p50_ms']:.2f} ms, p99 {sized['p99_ms']:.2f} ms; "
            f"reference p50 {ref['p50_ms']:.2f} ms, p99 {ref['p99_ms']:.2f} ms; ratio "
            f"{rows[-1]['ratio_to_first']:.2f} (pair median {window['pair_ratio_median']:.2f}); "
            f"RSS {rows[-1]['rss_mb']:.0f} MB (reference {rows[-1]['reference_rss_mb']:.0f} MB)",
            flush=True,
        )

    # Changes under load, every `reload_every` seconds while measuring; latency should not jump
    # by the build time. "append": a class becomes ready (the common change; the API appends
    # it to its matrix). "delete": a class is deleted (the API drops its row in place, following
    # the removal log; results before that change were full rebuilds, kind "rebuild").
    # The reference is never changed, so its numbers from the same window are the baseline the
    # jump is read against. The sized server's background update still takes CPU while the
    # reference answers (2 cores), so the reference also shows that load: the difference is
    # the stall inside the sized process (its GIL, its lock), not the update's CPU cost.
    engine = make_engine(server.database_url)
    factory = make_session_factory(engine)
    largest = args.sizes[-1]
    added = 0

    def add_one() -> None:
        nonlocal added
        insert_random_classes(
            factory,
            server.model_id,
            1,
            dim,
            f"s{largest}",
            seed=10**6 + added,
            first=largest + added,
        )
        added += 1

    def under_changes(change: Callable[[], None], kind: str) -> dict[str, Any]:
        stop = threading.Event()
        changes = 0

        def changer() -> None:
            nonlocal changes
            while not stop.wait(args.reload_every):
                change()
                changes += 1

        thread = threading.Thread(target=changer, daemon=True)
        thread.start()
        window = classify_alternating(reference.url, server.url, image, count=count)
        stop.set()
        thread.join()
        return {
            "classes": largest,
            "c1": window["sized"],
            "reference_c1": window["reference"],
            "pair_ratio_median": window["pair_ratio_median"],
            "reloads": changes,
            "kind": kind,
            "reload_every_s": args.reload_every,
        }

    appending = under_changes(add_one, "append")
    rebuilding = under_changes(lambda: delete_one_class(factory, server.model_id), "delete")
    engine.dispose()
    return {
        "reference": {
            "classes": first,
            "ratio": "sized p50 / reference p50, same alternating window",
        },
        "rows": rows,
        "during_reloads": appending,
        "during_rebuilds": rebuilding,
    }
