"""The server under test and the measurement helpers every part uses."""

from __future__ import annotations

import argparse
import io
import os
import platform
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from cli import serve_process


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def summarize(latencies_s: list[float], wall_s: float, items: int) -> dict[str, float]:
    ms = [v * 1000 for v in latencies_s]
    return {
        "p50_ms": percentile(ms, 50),
        "p99_ms": percentile(ms, 99),
        "mean_ms": float(np.mean(ms)) if ms else float("nan"),
        "throughput_per_s": items / wall_s if wall_s > 0 else float("nan"),
        "count": items,
    }


def test_image(size: int = 256, seed: int = 0) -> bytes:
    """A smooth random picture as a JPEG (a photo-like decode cost, not a solid colour)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    image = Image.fromarray(small).resize((size, size), Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def machine() -> dict[str, Any]:
    import torch

    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "load_average_at_start": [round(x, 2) for x in load],
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


@dataclass(frozen=True)
class Server:
    """A ready `liteembed serve`, its database, and the model id it reports (rows written
    straight into the database must carry it)."""

    process: serve_process.Server
    database_url: str
    model_id: str

    @property
    def url(self) -> str:
        return self.process.url

    @property
    def pid(self) -> int:
        return self.process.pid


@contextmanager
def running(
    args: argparse.Namespace, workdir: Path, *, code: Path | None = None, **settings: str
) -> Iterator[Server]:
    """`liteembed serve` with the run's model settings, on a fresh SQLite file (or
    `database_url`), embedded worker; each of `settings` becomes LITEEMBED_<KEY>. `code`: run
    the server of another checkout of this project (the `versus` part's baseline) instead of
    this one's."""
    database_url = settings.get("database_url") or (
        f"sqlite:///{workdir / f'perf-{uuid.uuid4().hex[:8]}.db'}"
    )
    env = {
        "LITEEMBED_MODEL": args.model,
        "LITEEMBED_PRETRAINED": args.pretrained,
        "LITEEMBED_DEVICE": args.device,
        "LITEEMBED_PRECISION": args.precision,
        "LITEEMBED_CACHE_DIR": str(args.cache_dir),
        "LITEEMBED_DATABASE_URL": database_url,
        "LITEEMBED_LOG_LEVEL": "WARNING",
        "LITEEMBED_CLASSIFIER_DTYPE": args.classifier_dtype,
    }
    if args.torch_threads:
        env["LITEEMBED_TORCH_THREADS"] = str(args.torch_threads)
    env.update({f"LITEEMBED_{k.upper()}": v for k, v in settings.items()})
    port = serve_process.free_port()
    environment = serve_process.environment(env)
    if code is not None:
        environment["PYTHONPATH"] = str(code)
    with serve_process.serving(
        env=environment,
        log_path=workdir / f"server-{port}.log",
        port=port,
        cwd=code,
        ready_timeout=args.start_timeout,
        grace_s=30,
    ) as process:
        # The model id as the server reports it.
        probe = httpx.post(
            f"{process.url}/v1/classify",
            files={"image": ("x.jpg", test_image(), "image/jpeg")},
            timeout=120,
        )
        probe.raise_for_status()
        yield Server(process=process, database_url=database_url, model_id=probe.json()["model"])
