"""`python -m benchmarks.perf`: the arguments, and --render to re-print a result JSON."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import benchmarks.perf as package
from benchmarks.perf.report import markdown

RESULTS = Path(__file__).resolve().parents[1] / "results"
DEFAULT_CACHE = Path(__file__).resolve().parents[2] / ".liteembed-cache" / "perf"


def add_server_arguments(
    parser: argparse.ArgumentParser, *, torch_threads: int | None = None
) -> None:
    """The options `harness.running` reads from its namespace (shared with
    benchmarks/profile_server.py)."""
    parser.add_argument("--model", default="liteembed-tiny")
    parser.add_argument("--pretrained", default="random")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--classifier-dtype", default="float32", choices=["float32", "float16"])
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    parser.add_argument(
        "--torch-threads",
        type=int,
        default=torch_threads,
        help="for this process and the servers alike",
    )
    parser.add_argument("--start-timeout", type=float, default=900)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.perf", description=package.__doc__)
    add_server_arguments(parser)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=4.0, help="per measurement")
    parser.add_argument("--sizes", default="10,1000,10000,100000")
    parser.add_argument("--train-steps", type=int, default=10, help="engine per-step timing")
    parser.add_argument("--reload-every", type=float, default=1.0)
    parser.add_argument("--parts", default="classify,training,scale,freshness,tenants")
    parser.add_argument("--tenant-classes", type=int, default=100_000, help="tenants part")
    parser.add_argument("--tenants", type=int, default=1000, help="tenants part: split over")
    parser.add_argument(
        "--database-url",
        default=None,
        help="an empty database the freshness part's two servers share (default: a SQLite file)",
    )
    parser.add_argument(
        "--baseline",
        type=Path,
        default=None,
        help="versus part: another checkout of this project (e.g. a git worktree of a commit)",
    )
    parser.add_argument(
        "--versus-request",
        default="classify",
        choices=["classify", "embeddings"],
        help="versus part: raw-body /v1/classify, or /v1/embeddings with an OpenAI-shaped body",
    )
    parser.add_argument("--note", default="", help="what else ran on the machine")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--render", type=Path, default=None, help="re-print a result JSON")
    args = parser.parse_args(argv)
    if args.render is not None:
        print(markdown(json.loads(args.render.read_text())))
        return 0
    args.sizes = [int(s) for s in args.sizes.split(",")]
    if "versus" in args.parts.split(",") and args.baseline is None:
        parser.error("the versus part needs --baseline (another checkout of this project)")
    args.out = args.out or RESULTS / (
        f"perf-{args.model}{'-' + args.device if args.device != 'cpu' else ''}.json"
    )
    # Imported here: a measurement needs torch, httpx and the service; --render needs none.
    from benchmarks.perf.run import measure

    measure(args, argv)
    return 0
