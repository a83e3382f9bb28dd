"""Part 2, training: POST -> ready through the service with the short (default) and the full
text context, and the engine's per-step time and batched speed-up in this process."""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from benchmarks.perf.harness import Server, running, test_image


def via_service(server: Server) -> dict[str, Any]:
    """A warm-up class, then one 4-shot class, then four posted together, on a default server."""
    post_and_wait(server.url, ["warmup"], 90, timeout=1800)
    short = post_and_wait(server.url, ["zorb"], 1, timeout=1800)
    four = post_and_wait(server.url, ["quib", "plax", "vorn", "gleb"], 2, timeout=3600)
    print(f"  ready in {short['seconds_all']:.2f} s; 4 in {four['seconds_all']:.2f} s")
    return {"short": short, "four_posted": four}


def full_context(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """One 4-shot class on a server that trains with the full 77-token context."""
    with running(args, workdir, train_options='{"short_context": false}') as server:
        post_and_wait(server.url, ["warmup"], 90, timeout=1800)
        return post_and_wait(server.url, ["zorb"], 1, timeout=3600)


def four_shot_files(seed: int) -> list[tuple[str, Any]]:
    return [
        ("images", (f"e{i}.jpg", test_image(seed=seed * 10 + i), "image/jpeg")) for i in range(4)
    ]


def post_and_wait(url: str, names: list[str], seed: int, timeout: float) -> dict[str, Any]:
    """POST one 4-shot class per name (back to back), then wait for all to be ready."""
    with httpx.Client(base_url=url, timeout=120) as client:
        started = time.perf_counter()
        ids = []
        for n, name in enumerate(names):
            response = client.post(
                "/v1/classes", data={"name": name}, files=four_shot_files(seed + n)
            )
            response.raise_for_status()
            ids.append(response.json()["id"])
        done: dict[str, float] = {}
        bodies: dict[str, Any] = {}
        deadline = time.monotonic() + timeout
        while len(done) < len(ids):
            if time.monotonic() > deadline:
                raise RuntimeError(f"classes not ready after {timeout} s: {bodies}")
            for class_id in ids:
                if class_id in done:
                    continue
                body = client.get(f"/v1/classes/{class_id}").json()
                if body["status"] == "failed":
                    raise RuntimeError(f"training failed: {body['error']}")
                if body["status"] == "ready":
                    done[class_id] = time.perf_counter() - started
                    bodies[class_id] = body
            time.sleep(0.02)
    diagnostics = [bodies[i]["diagnostics"] or {} for i in ids]
    return {
        "seconds_each": [done[i] for i in ids],
        "seconds_all": max(done.values()),
        "steps_run": [d.get("steps_run") for d in diagnostics],
        "stop_reason": [d.get("stop_reason") for d in diagnostics],
        "batch_sizes": [d.get("batch_size") for d in diagnostics],
        "engine_seconds": [d.get("seconds") for d in diagnostics],
    }


def engine_training(backend: Any, vocabulary: Any, steps: int) -> dict[str, Any]:
    """Per-step time (short vs full context) and the batched speed-up, in this process."""
    from liteembed import ClassRequest, learn_class, learn_classes
    from liteembed.config import OptimizationConfig
    from liteembed.images import decode_image

    def images(seed: int) -> list[Any]:
        return [decode_image(test_image(seed=seed * 10 + i)) for i in range(4)]

    def timed(fn: Callable[[], Any]) -> float:
        t = time.perf_counter()
        fn()
        return time.perf_counter() - t

    out: dict[str, Any] = {"steps": steps}
    # Every timed run gets images of its own: the engine keeps the features of views it has
    # encoded (liteembed.view_cache), so images seen before would skip their encode.
    # A fixed step count: the per-step time is the difference of two runs of known lengths.
    fixed = OptimizationConfig(step_rule="fixed", early_stopping=False)
    learn_class(backend, vocabulary, "warmup", images(99), config=fixed.with_(steps=2))
    for label, short in (("short", True), ("full", False)):
        config = fixed.with_(short_context=short)
        seed = 1 if short else 3
        one = timed(
            lambda c=config, s=seed: learn_class(
                backend, vocabulary, "zorb", images(s), config=c.with_(steps=1)
            )
        )
        many = timed(
            lambda c=config, s=seed: learn_class(
                backend, vocabulary, "zorb", images(s + 1), config=c.with_(steps=steps + 1)
            )
        )
        out[f"step_ms_{label}"] = (many - one) / steps * 1000
        out[f"setup_s_{label}"] = one
    out["step_speedup_short"] = out["step_ms_full"] / out["step_ms_short"]

    config = fixed.with_(steps=steps)
    requests = [ClassRequest(f"zorb{i}", images(i + 11)) for i in range(4)]
    alone = sum(
        timed(lambda r=r: learn_class(backend, vocabulary, r.name, r.images, config=config))
        for r in requests
    )
    fresh = [ClassRequest(f"zorb{i}", images(i + 21)) for i in range(4)]
    together = timed(lambda: learn_classes(backend, vocabulary, fresh, config=config))
    out.update(
        {
            "four_alone_s": alone,
            "four_batched_s": together,
            "batched_speedup": alone / together,
        }
    )
    return out
