"""Peak memory of the worst upload the limits allow, on real processes.

    python -m benchmarks.memory_worst_case                    # liteembed-tiny, SQLite, Redis
    python -m benchmarks.memory_worst_case --side 2000 --out /tmp/x   # a quick smoke run

Starts `liteembed serve` (uvicorn) and a separate `liteembed worker` (Redis queue) on one SQLite
file, warms both with a small class and a small /classify (so lazy start-up costs are not
counted), then sends the worst requests the limits allow: as many images as allowed, full-size
PNGs (a small file that declares MAX_IMAGE_PIXELS pixels: the most a decoder must expand) while
the per-request pixel budget lasts, the rest small. Each measurement resets the process's peak
RSS (/proc/<pid>/clear_refs) and reads VmHWM after the request (for the worker: once the class
is trained), so the figure is the peak over the idle process, not a sampled value. The request
the limits refuse (every image full size) is sent too and must be a 413.

Prints a table and writes JSON to benchmarks/results/memory-worst-case.json. Linux only.
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from PIL import Image

from cli import serve_process
from service.core.config import Settings

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
TARGET_MB = 300
ADMIN = "memory-bench-admin"
AUTH = {"Authorization": f"Bearer {ADMIN}"}


def png(side: int, colour: tuple[int, int, int]) -> bytes:
    """A solid square: a few hundred KB at most, whatever its pixel count."""
    buffer = io.BytesIO()
    Image.new("RGB", (side, side), colour).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def worst_images(limits: Settings, count: int, side: int) -> list[bytes]:
    """`count` images within every limit, the most pixels to decode first."""
    full = side * side
    assert full <= limits.max_image_pixels, "side is over MAX_IMAGE_PIXELS"
    large = png(side, (30, 140, 60))
    images: list[bytes] = []
    budget = limits.max_request_pixels
    for index in range(count):
        left = count - index - 1
        small_side = 64
        # Full size while what is left of the budget still covers the small ones after it.
        if budget - full >= left * small_side * small_side:
            images.append(large)
            budget -= full
        else:
            images.append(png(small_side, (30 + index, 140, 60)))
            budget -= small_side * small_side
    return images


def _proc(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def reset_peak(pid: int) -> int:
    """Reset the process's peak RSS to its current RSS; return that (bytes)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")
    return _proc(pid, "VmRSS")


def peak(pid: int) -> int:
    return _proc(pid, "VmHWM")


def wait_trained(http: httpx.Client, class_id: str, timeout: float = 900) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = http.get(f"/v1/classes/{class_id}").json()["status"]
        if status in ("ready", "failed"):
            return str(status)
        time.sleep(0.2)
    raise SystemExit(f"class {class_id} was not trained in {timeout} s")


def files(field: str, images: list[bytes]) -> list[tuple[str, Any]]:
    return [(field, (f"{i}.png", data, "image/png")) for i, data in enumerate(images)]


def run(args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="liteembed-memory-"))
    port = args.port
    settings = {
        "LITEEMBED_DATABASE_URL": args.database_url or f"sqlite:///{workdir / 'liteembed.db'}",
        "LITEEMBED_REDIS_URL": args.redis_url,
        "LITEEMBED_REDIS_NAMESPACE": f"liteembed-memory-{uuid.uuid4().hex[:8]}",
        "LITEEMBED_MODEL": args.model,
        "LITEEMBED_PRETRAINED": args.pretrained,
        "LITEEMBED_DEVICE": "cpu",
        "LITEEMBED_CACHE_DIR": str(args.cache_dir),
        "LITEEMBED_ADMIN_KEYS": ADMIN,
        "LITEEMBED_TRAIN_STEPS": str(args.train_steps),
        "LITEEMBED_TORCH_THREADS": "1",
        "LITEEMBED_HEARTBEAT_SECONDS": "0.5",
        "LITEEMBED_CLASSIFIER_REFRESH_SECONDS": "0.5",
    }
    env = serve_process.environment(settings | {"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"})
    limits = Settings(_env_file=None)  # type: ignore[call-arg]
    subprocess.run([sys.executable, "-m", "cli.main", "migrate"], env=env, cwd=ROOT, check=True)
    register = worst_images(limits, limits.max_images, args.side)
    classify = worst_images(limits, limits.max_classify_images, args.side)
    refused = [register[0]] * limits.max_images
    rows: list[dict[str, Any]] = []
    with (
        serve_process.serving(
            env=env, log_path=workdir / "api.log", port=port, ready_timeout=600, grace_s=30
        ) as api,
        serve_process.running(
            ["worker"], env=env, log_path=workdir / "worker.log", grace_s=30
        ) as worker,
        httpx.Client(base_url=api.url, headers=AUTH, timeout=600) as http,
    ):
        small = [png(64, (200, 30, 30)), png(64, (190, 40, 30))]
        warm = http.post("/v1/classes", data={"name": "warm"}, files=files("images", small))
        warm.raise_for_status()
        wait_trained(http, warm.json()["id"])
        http.post("/v1/classify", files=files("images", small)).raise_for_status()

        def row(what: str, pid: int, send: Any) -> None:
            idle = reset_peak(pid)
            status = send()
            grew = peak(pid) - idle
            rows.append(
                {
                    "what": what,
                    "status": status,
                    "idle_mb": round(idle / 2**20),
                    "peak_growth_mb": round(grew / 2**20),
                }
            )

        full = sum(1 for image in register if image is register[0])
        label = f"{len(register)} images ({full} PNG {args.side}x{args.side}, rest small)"
        row(
            f"API: POST /v1/classes, {label}",
            api.pid,
            lambda: (
                http.post(
                    "/v1/classes", data={"name": "worst"}, files=files("images", register)
                ).status_code
            ),
        )
        worst = http.get("/v1/classes", params={"status": "queued"}).json()["items"]
        class_id = next((c["id"] for c in worst if c["name"] == "worst"), None)
        # The worker picks the class up at once; its peak covers the whole training run.
        if class_id is not None:
            row("worker: training that class", worker.pid, lambda: wait_trained(http, class_id))
        label = f"{len(classify)} images ({sum(1 for i in classify if i is classify[0])} full)"
        row(
            f"API: POST /v1/classify, {label}",
            api.pid,
            lambda: http.post("/v1/classify", files=files("images", classify)).status_code,
        )
        row(
            f"API: POST /v1/classes, {len(refused)} full-size PNGs (all of them)",
            api.pid,
            lambda: (
                http.post(
                    "/v1/classes", data={"name": "refused"}, files=files("images", refused)
                ).status_code
            ),
        )
    return {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": "python -m benchmarks.memory_worst_case " + " ".join(sys.argv[1:]),
        "model": args.model,
        "limits": {
            "max_images": limits.max_images,
            "max_image_pixels": limits.max_image_pixels,
            "max_request_pixels": limits.max_request_pixels,
            "max_request_bytes": limits.max_request_bytes,
        },
        "target_mb": TARGET_MB,
        "rows": rows,
    }


def table(result: dict[str, Any]) -> str:
    lines = ["| request | answer | idle RSS (MB) | peak growth (MB) |", "|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['what']} | {r['status']} | {r['idle_mb']} | {r['peak_growth_mb']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="liteembed-tiny")
    parser.add_argument("--pretrained", default="random")
    parser.add_argument("--side", type=int, default=5990, help="side of the full-size PNGs")
    parser.add_argument("--train-steps", type=int, default=30)
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--database-url", default=None, help="default: SQLite in a temp dir")
    parser.add_argument("--cache-dir", type=Path, default=ROOT / ".liteembed-cache" / "bench")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    result = run(args)
    print(table(result))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "memory-worst-case.json").write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
