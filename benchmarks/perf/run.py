"""One measurement run: the bare model loaded here, the parts asked for in order (each on the
servers it needs), and the result written as JSON and markdown."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from benchmarks.perf import classify, freshness, peer, scale, tenants, training, versus
from benchmarks.perf.harness import machine, running
from benchmarks.perf.report import markdown
from liteembed.backend import load_backend
from liteembed.vocab import load_vocabulary


def measure(args: argparse.Namespace, argv: list[str] | None) -> dict[str, Any]:
    """Run the parts in `args.parts`, write `args.out` (.json and .md) and print the tables."""
    parts = set(args.parts.split(","))
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)  # the bare model gets what the server gets

    result: dict[str, Any] = {
        "model": args.model,
        "pretrained": args.pretrained,
        "device": args.device,
        "precision": args.precision,
        "classifier_dtype": args.classifier_dtype,
        "torch_threads": args.torch_threads or torch.get_num_threads(),
        "command": "python -m benchmarks.perf "
        + shlex.join(argv if argv is not None else sys.argv[1:]),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "note": args.note,
    }
    args.cache_dir.mkdir(parents=True, exist_ok=True)
    backend = load_backend(
        args.model, args.pretrained, device=args.device, precision=args.precision
    )
    # Built (or read from the cache) here first, so the servers start warm.
    vocabulary = load_vocabulary(backend, args.cache_dir)
    dim = int(backend.embed_dim)
    with tempfile.TemporaryDirectory(prefix="liteembed-perf-") as tmp:
        workdir = Path(tmp)
        if parts & {"classify", "scale", "training", "peer"}:
            print(f"[{args.model}] server (default settings)", flush=True)
            with running(args, workdir) as server:
                if "classify" in parts:
                    print("classify:", flush=True)
                    result["classify"] = classify.part_classify(args, server, backend)
                if "peer" in parts:
                    print("peer (Infinity on a matched encoder, side by side):", flush=True)
                    result["peer"] = peer.part_peer(args, server, backend, workdir)
                if "training" in parts:
                    print("training (short context, via the service):", flush=True)
                    result["training"] = training.via_service(server)
                if "scale" in parts:
                    # A second server only for this part: the same-window baseline every size
                    # is divided by (two ViT-B-32 servers are ~3.5 GB together).
                    print("scale (reference server alongside):", flush=True)
                    with running(args, workdir) as reference:
                        result["scale"] = scale.part_scale(args, server, reference, dim)
        if "training" in parts:
            print("training (full context, via the service):", flush=True)
            result["training"]["full"] = training.full_context(args, workdir)
            print("training (engine, in-process):", flush=True)
            result["training"]["engine"] = training.engine_training(
                backend, vocabulary, args.train_steps
            )
        if "freshness" in parts:
            print("freshness (with and without the per-request generation check):", flush=True)
            result["freshness"] = freshness.part_freshness(args, workdir, dim)
        if "versus" in parts:
            print(f"versus (this checkout against {args.baseline}):", flush=True)
            result["versus"] = versus.part_versus(args, workdir, dim)
        if "tenants" in parts:
            print("tenants (one tenant among many against one tenant of every class):", flush=True)
            result["tenants"] = tenants.part_tenants(args, workdir, dim)
    out: Path = args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    table = markdown(result)
    out.with_suffix(".md").write_text(table + "\n")
    print()
    print(table)
    print(f"written: {out} and {out.with_suffix('.md')}")
    return result
