"""Where a /classify request's time goes inside the server: py-spy on a live `liteembed serve`.

    python -m benchmarks.profile_server --model liteembed-tiny            # the model is tiny:
    python -m benchmarks.profile_server --model ViT-B-32 --seconds 20     # the encoder dominates

Starts the server as benchmarks/perf does (a uvicorn subprocess, SQLite, 10 ready classes),
drives /classify at a fixed concurrency over HTTP, and samples the server's Python threads with
`py-spy record --threads` meanwhile. Prints, and writes as markdown + JSON:

- each thread's busy share of the window (running samples / the window's samples; py-spy counts
  a thread woken but waiting for the GIL as running, so on a saturated CPU the shares include
  GIL waits and can add up to more than the cores), by role:
  the event loop (uvicorn, Starlette, FastAPI, multipart), the model thread, the preprocessing
  pool;
- the event loop's busy samples split by the innermost library they were in (HTTP parsing,
  multipart, FastAPI/Starlette, pydantic, this service's code, asyncio itself).

This is what explains a missed overhead target: when the event loop is near 100 % busy while the
model thread idles, the per-request cost of the web stack, not the model, sets the pace. Needs
py-spy (in the `bench` extra) and permission to ptrace the server (root, or ptrace_scope 0).
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import subprocess
import sys
import tempfile
import threading
from collections import Counter, defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks.perf import harness, rows
from benchmarks.perf.cli import RESULTS, add_server_arguments
from benchmarks.perf.load import classify_concurrent

# Innermost matching library wins: a sample in pydantic called from FastAPI counts as pydantic.
# Order matters only between patterns that can match the same file path.
LIBRARIES: list[tuple[str, str]] = [
    ("torch / open_clip (encode, preprocess)", r"(^|/)(torch|open_clip|torchvision)/"),
    ("PIL (decode)", r"(^|/)PIL/"),
    ("numpy", r"(^|/)numpy/"),
    ("multipart parsing", r"(^|/)(multipart|python_multipart)/"),
    ("HTTP parsing (h11 / httptools)", r"(^|/)(h11|httptools)/|uvicorn/protocols/"),
    ("pydantic", r"(^|/)pydantic(_core)?/"),
    ("FastAPI / Starlette", r"(^|/)(fastapi|starlette)/"),
    ("anyio (thread hand-offs)", r"(^|/)anyio/"),
    ("prometheus_client", r"(^|/)prometheus_client/"),
    ("uvicorn (other)", r"(^|/)uvicorn/"),
    ("this service (service/, liteembed/)", r"(^|/)(service|liteembed|workers)/"),
    ("asyncio (loop, selector, socket reads and writes)", r"(^|/)asyncio/|(^|/)selectors.py"),
]
FRAME = re.compile(r"^(?P<function>.*) \((?P<file>[^()]*?)(?::\d+)?\)$")
THREAD = re.compile(r"^thread \((?P<id>(0x)?[0-9A-Fa-f]+)\)")  # py-spy: the native id


def parse_raw(text: str) -> dict[str, list[tuple[list[str], int]]]:
    """py-spy's raw (collapsed) output -> {thread id: [(frames root..leaf, count)]}."""
    threads: dict[str, list[tuple[list[str], int]]] = defaultdict(list)
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        thread = "?"
        for i, frame in enumerate(frames):
            match = THREAD.match(frame)
            if match:
                thread = match.group("id")
                frames = frames[i + 1 :]
                break
        threads[thread].append((frames, int(count)))
    return threads


def frame_file(frame: str) -> str:
    match = FRAME.match(frame)
    return match.group("file") if match else ""


def role_of(samples: list[tuple[list[str], int]]) -> str:
    """What a thread is, from the code it was seen in (py-spy's raw output has no names)."""
    seen = " ".join(frame for frames, _ in samples for frame in frames)
    if "ModelRunner._run (" in seen:
        return "model thread"
    if "run_forever" in seen or "_run_once" in seen:
        return "event loop"
    if "_pixels (" in seen or "decode_image" in seen:
        return "preprocess pool"
    if "service/scoring/sync.py" in seen:
        return "class-matrix refresher"
    return "other"


def library_of(frames: list[str]) -> str:
    for frame in reversed(frames):  # innermost first
        path = frame_file(frame)
        for label, pattern in LIBRARIES:
            if re.search(pattern, path):
                return label
    return "other"


def summarize_profile(
    threads: dict[str, list[tuple[list[str], int]]], total_samples: int
) -> dict[str, Any]:
    rows = []
    loop_split: Counter[str] = Counter()
    for thread, samples in threads.items():
        # Recorded without --idle: py-spy keeps only samples where the thread was running
        # (it asks the OS), so a thread's samples over the window's samples is its busy share.
        busy_count = sum(c for _, c in samples)
        role = role_of(samples)
        leaves: Counter[str] = Counter()
        for frames, c in samples:
            leaves[frames[-1] if frames else "?"] += c
        rows.append(
            {
                "thread": thread,
                "role": role,
                "samples": busy_count,
                "busy_share": busy_count / max(total_samples, busy_count, 1),
                "top_self": leaves.most_common(5),
            }
        )
        if role == "event loop":
            for frames, c in samples:
                loop_split[library_of(frames)] += c
    rows.sort(key=lambda r: -r["busy_share"])
    loop_total = sum(loop_split.values())
    return {
        "threads": rows,
        "event_loop_split": [
            {"library": label, "share": count / loop_total}
            for label, count in loop_split.most_common()
        ]
        if loop_total
        else [],
    }


def markdown(result: dict[str, Any]) -> str:
    lines = [
        f"### Server profile: {result['model']} ({result['machine']['cores']} cores, "
        f"{result['machine']['cpu']}, {result['torch_threads']} torch thread(s))",
        "",
        f"Command: `{result['command']}`; {result['date']}. /classify at concurrency "
        f"{result['concurrency']} for {result['seconds']} s: "
        f"{result['load']['throughput_per_s']:.1f} req/s, p50 {result['load']['p50_ms']:.2f} ms. "
        f"py-spy at {result['rate']} Hz.",
        "",
        "| thread (role) | busy share of the window (running or waiting for the GIL) "
        "| where its busy samples ended (top 3) |",
        "|---|---:|---|",
    ]
    for row in result["profile"]["threads"]:
        if row["busy_share"] < 0.01:
            continue
        top = "; ".join(f"`{frame}` {count}" for frame, count in row["top_self"][:3])
        lines.append(f"| {row['role']} | {row['busy_share'] * 100:.0f} % | {top} |")
    split = result["profile"]["event_loop_split"]
    if split:
        lines += [
            "",
            "Event loop's busy samples by the innermost library they were in:",
            "",
            "| library | share |",
            "|---|---:|",
        ]
        lines += [f"| {s['library']} | {s['share'] * 100:.0f} % |" for s in split]
    lines.append("")
    if result.get("note"):
        lines += [result["note"], ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.profile_server", description=__doc__
    )
    add_server_arguments(parser, torch_threads=1)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument("--note", default="")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--render", type=Path, default=None, help="re-print a result JSON")
    args = parser.parse_args(argv)
    if args.render is not None:
        print(markdown(json.loads(args.render.read_text())))
        return 0

    from liteembed.backend import load_backend

    dim = int(load_backend(args.model, args.pretrained, device="cpu").embed_dim)
    image = harness.test_image()
    out = args.out or RESULTS / f"profile-{args.model}.json"
    with tempfile.TemporaryDirectory(prefix="liteembed-profile-") as tmp:
        workdir = Path(tmp)
        with harness.running(args, workdir) as server:
            rows.replace_ready_classes(server.database_url, server.model_id, 10, dim, "base")
            rows.wait_for_size(server, 10, "base")
            # Warm-up, and the rate that sizes the load so it just outlasts the profile window.
            warm = classify_concurrent(
                server.url, image, concurrency=args.concurrency, count=4 * args.concurrency
            )
            count = int(warm["throughput_per_s"] * args.seconds * 1.2) + args.concurrency
            raw = workdir / "profile.txt"
            spy = subprocess.Popen(
                [
                    str(Path(sys.executable).with_name("py-spy")),
                    "record",
                    "--pid",
                    str(server.pid),
                    "--duration",
                    str(int(args.seconds)),
                    "--rate",
                    str(args.rate),
                    "--format",
                    "raw",
                    "--threads",
                    "--nonblocking",
                    "--output",
                    str(raw),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            load: dict[str, float] = {}

            def drive() -> None:
                load.update(
                    classify_concurrent(
                        server.url, image, concurrency=args.concurrency, count=count
                    )
                )

            driver = threading.Thread(target=drive)
            driver.start()
            _, err = spy.communicate(timeout=args.seconds + 120)
            driver.join()
            if spy.returncode != 0 or not raw.exists():
                raise SystemExit(f"py-spy failed ({spy.returncode}): {err.decode()[-2000:]}")
            threads = parse_raw(raw.read_text())
    total = int(args.seconds * args.rate)
    result = {
        "model": args.model,
        "command": "python -m benchmarks.profile_server "
        + shlex.join(argv if argv is not None else sys.argv[1:]),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": harness.machine(),
        "torch_threads": args.torch_threads,
        "concurrency": args.concurrency,
        "seconds": args.seconds,
        "rate": args.rate,
        "load": load,
        "profile": summarize_profile(threads, total),
        "note": args.note,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    table = markdown(result)
    out.with_suffix(".md").write_text(table + "\n")
    print(table)
    print(f"written: {out} and {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
