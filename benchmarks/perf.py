"""Speed of the service next to the bare model, in one run on one machine.

    python -m benchmarks.perf --model liteembed-tiny
    python -m benchmarks.perf --model ViT-B-32          # random weights: speed only

Five parts, each printed as a markdown table and written to benchmarks/results/perf-<model>.json:

1. classify: the bare model (preprocess + encode, in this process, same torch threads) at batch 1
   and batch 32, against POST /v1/classify on a real `liteembed serve` subprocess (uvicorn) over
   HTTP at concurrency 1 and 16. Measured in interleaved rounds so background load hits both
   sides alike; the ratios are per round, then the median.
2. training: POST -> ready for a 4-shot class with the default steps (server default: the short
   text context) and with the full 77-token context (a second server with
   LITEEMBED_TRAIN_OPTIONS='{"short_context": false}'); the engine's per-step time both ways; and
   the batched speed-up (4 classes in one learn_classes call vs one by one).
3. scale: /classify latency at concurrency 1 with 10 ... 100,000 ready classes (rows inserted
   directly into the server's database, generation bumped), as a ratio to 10 classes measured
   side by side: a second "reference" server holds the first size (10 classes) for the whole
   part, and for each size one client alternates sequential requests between the reference and
   the sized server (A, B, A, B, ...; one request in flight at a time, so only one server works
   at any moment). The ratio is sized p50 / reference p50 from the same window, so drift of the
   machine between sizes cancels; the median of the per-pair ratios is reported next to it. The
   first row (10 vs 10) compares two equal servers: its distance from 1.00 is the noise floor.
   Also the resident memory of both API processes at each size, and the latency while the
   largest matrix changes (appends, then deletes), again alternating with the reference.
4. freshness: what /classify's per-request check of the class generation costs (it makes a
   class any API process answered `ready` for scored by the next request). Two servers on one
   shared database (a fresh SQLite file, or `--database-url`), one with the check (the default)
   and one with LITEEMBED_CLASSIFY_CHECKS_GENERATION=false, side by side: at concurrency 1 one
   client alternates requests between them (ratio of p50s from the same window, and the median
   per-pair ratio); at concurrency 16 the two are loaded in turn, in interleaved rounds (the
   order flips each round), and the throughput ratio is per round, then the median.
5. tenants: /classify within one tenant when the matrix's classes (100,000 by default) are split
   over 1,000 tenants, against the same count all in one tenant: two servers, alternating
   requests as in part 3 (the ratio of p50s from the same window, and the median per-pair ratio).

This is a measurement, not a test: nothing asserts on time. The client runs on the same CPU as
the server, so on a small machine the HTTP numbers include the client's own cost.

Longer than the project's ~400-line module guide: five measured parts share one server
harness and one report writer, and keeping them in one script keeps a run self-contained.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import platform
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # httpx is imported where used, so --render needs only numpy
    import httpx

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DEFAULT_CACHE = ROOT / ".liteembed-cache" / "perf"


# --- small helpers ---------------------------------------------------------------------------


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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- the server under test --------------------------------------------------------------------


class Server:
    """`liteembed serve` in a subprocess, on a fresh SQLite file, embedded worker."""

    def __init__(self, args: argparse.Namespace, workdir: Path, **settings: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.database_url = settings.get("database_url") or (
            f"sqlite:///{workdir / f'perf-{uuid.uuid4().hex[:8]}.db'}"
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("LITEEMBED_")}
        env.update(
            {
                "LITEEMBED_MODEL": args.model,
                "LITEEMBED_PRETRAINED": args.pretrained,
                "LITEEMBED_DEVICE": args.device,
                "LITEEMBED_PRECISION": args.precision,
                "LITEEMBED_CACHE_DIR": str(args.cache_dir),
                "LITEEMBED_DATABASE_URL": self.database_url,
                "LITEEMBED_LOG_LEVEL": "WARNING",
                "LITEEMBED_CLASSIFIER_DTYPE": args.classifier_dtype,
            }
        )
        if args.torch_threads:
            env["LITEEMBED_TORCH_THREADS"] = str(args.torch_threads)
        env.update({f"LITEEMBED_{k.upper()}": v for k, v in settings.items()})
        self.log = open(workdir / f"server-{self.port}.log", "wb")  # noqa: SIM115
        self.process = subprocess.Popen(
            [sys.executable, "-m", "cli.main", "serve", "--port", str(self.port)],
            cwd=ROOT,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        self.model_id = ""

    def wait_ready(self, timeout: float) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"server exited with {self.process.returncode}; see {self.log.name}"
                )
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        else:
            raise RuntimeError(f"server not ready after {timeout} s; see {self.log.name}")
        # The model id as the server reports it (rows for the scale test must carry it).
        probe = httpx.post(
            f"{self.url}/v1/classify",
            files={"image": ("x.jpg", test_image(), "image/jpeg")},
            timeout=120,
        )
        probe.raise_for_status()
        self.model_id = probe.json()["model"]

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


@contextmanager
def running(args: argparse.Namespace, workdir: Path, **settings: str) -> Iterator[Server]:
    server = Server(args, workdir, **settings)
    try:
        server.wait_ready(args.start_timeout)
        yield server
    finally:
        server.stop()


# --- rows written straight into the server's database ------------------------------------------


def replace_ready_classes(database_url: str, model_id: str, count: int, dim: int, tag: str) -> None:
    """Delete every class and insert `count` ready ones with random unit embeddings."""
    from sqlalchemy import delete

    from service.db import make_engine, make_session_factory, session_scope
    from service.models import PersonalizedClass

    engine = make_engine(database_url)
    factory = make_session_factory(engine)
    with session_scope(factory) as session:
        session.execute(delete(PersonalizedClass))
    insert_ready_classes(factory, model_id, count, dim, tag, seed=count)
    engine.dispose()


def insert_ready_classes(
    factory: Any,
    model_id: str,
    count: int,
    dim: int,
    tag: str,
    *,
    seed: int,
    first: int = 0,
    tenant_of: Callable[[int], str] | None = None,
) -> None:
    """Insert `count` ready classes with random unit embeddings and bump the generation; class
    i belongs to `tenant_of(i)` (default: the default tenant)."""
    from sqlalchemy import insert

    from service.db import session_scope
    from service.models import PersonalizedClass, bump_generation, utcnow

    rng = np.random.default_rng(seed)
    chunk = 5000
    for start in range(first, first + count, chunk):
        n = min(chunk, first + count - start)
        vectors = rng.normal(size=(n, dim)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        now = utcnow()
        rows = [
            {
                "id": str(uuid.uuid4()),
                "name": f"{tag}-{start + i}",
                "name_key": f"{tag}-{start + i}",
                "model_id": model_id,
                **({"tenant": tenant_of(start + i)} if tenant_of is not None else {}),
                "status": "ready",
                "progress": 1.0,
                "embedding": vectors[i].tobytes(),
                "dim": dim,
                "hints": [],
                "confusers": [],
                "created_at": now,
                "updated_at": now,
            }
            for i in range(n)
        ]
        with session_scope(factory) as session:
            session.execute(insert(PersonalizedClass), rows)
    with session_scope(factory) as session:
        bump_generation(session)


def delete_one_class(factory: Any, model_id: str) -> None:
    """Delete the newest ready class the way the API does (logged in the removal log)."""
    from sqlalchemy import select

    from service.crud import remove_class
    from service.db import session_scope
    from service.models import PersonalizedClass

    cls = PersonalizedClass
    with session_scope(factory) as session:
        newest = session.scalars(
            select(cls).where(cls.model_id == model_id).order_by(cls.created_at.desc()).limit(1)
        ).one()
        remove_class(session=session, row=newest)


# --- HTTP load ---------------------------------------------------------------------------------


def classify_sequential(
    url: str, image: bytes, *, count: int, warmup: int = 2, data: dict[str, Any] | None = None
) -> dict[str, float]:
    import httpx

    latencies = []
    with httpx.Client(base_url=url, timeout=300) as client:
        files = {"image": ("q.jpg", image, "image/jpeg")}
        for _ in range(warmup):
            client.post("/v1/classify", files=files, data=data or {}).raise_for_status()
        started = time.perf_counter()
        for _ in range(count):
            t = time.perf_counter()
            client.post("/v1/classify", files=files, data=data or {}).raise_for_status()
            latencies.append(time.perf_counter() - t)
        wall = time.perf_counter() - started
    return summarize(latencies, wall, count)


def classify_alternating(
    reference_url: str,
    sized_url: str,
    image: bytes,
    *,
    count: int,
    warmup: int = 2,
    transport: httpx.BaseTransport | None = None,
    reference_params: Callable[[int], dict[str, str]] | None = None,
    sized_params: Callable[[int], dict[str, str]] | None = None,
) -> dict[str, Any]:
    """`count` pairs of sequential requests from one client: reference, sized, reference, ...
    (`*_params(i)`: the query of each side's i-th request, e.g. the tenant it acts within).

    Measuring both servers in the same window is what makes their ratio trustworthy on a shared
    machine: background load and CPU frequency drift hit both lists alike, whereas two windows
    measured one after another drifted by more than the effect. One request is in flight at a
    time, so the two servers never compete for the CPU. `transport` is for tests (an
    httpx.MockTransport); the benchmark always talks real HTTP.
    """
    import httpx

    files = {"image": ("q.jpg", image, "image/jpeg")}

    def one(client: httpx.Client, params: dict[str, str] | None = None) -> float:
        t = time.perf_counter()
        client.post("/v1/classify", files=files, params=params).raise_for_status()
        return time.perf_counter() - t

    def query(of: Callable[[int], dict[str, str]] | None, i: int) -> dict[str, str] | None:
        return of(i) if of is not None else None

    reference: list[float] = []
    sized: list[float] = []
    with (
        httpx.Client(base_url=reference_url, timeout=300, transport=transport) as ref_client,
        httpx.Client(base_url=sized_url, timeout=300, transport=transport) as sized_client,
    ):
        for i in range(warmup):  # connections open, first-request costs paid on both sides
            one(ref_client, query(reference_params, i))
            one(sized_client, query(sized_params, i))
        for i in range(count):
            reference.append(one(ref_client, query(reference_params, i)))
            sized.append(one(sized_client, query(sized_params, i)))
    # Each request's neighbour in time is its pair, so a per-pair ratio cancels even drift
    # within the window; its median is robust to the odd stalled request on either side.
    pair_ratios = [s / r for s, r in zip(sized, reference, strict=True) if r > 0]
    return {
        # Throughput over each server's own busy time (the window is shared, so the wall
        # clock would halve both): the rate it serves at when it is the one working.
        "sized": summarize(sized, sum(sized), count),
        "reference": summarize(reference, sum(reference), count),
        "pair_ratio_median": statistics.median(pair_ratios) if pair_ratios else float("nan"),
        "pairs": count,
    }


def classify_concurrent(
    url: str, image: bytes, *, concurrency: int, count: int
) -> dict[str, float]:
    import httpx

    async def run() -> dict[str, float]:
        latencies: list[float] = []
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as client:
            files = {"image": ("q.jpg", image, "image/jpeg")}

            async def one() -> None:
                t = time.perf_counter()
                response = await client.post("/v1/classify", files=files)
                response.raise_for_status()
                latencies.append(time.perf_counter() - t)

            await asyncio.gather(*(one() for _ in range(concurrency)))  # warm the connections
            latencies.clear()
            queue: asyncio.Queue[int] = asyncio.Queue()
            for i in range(count):
                queue.put_nowait(i)

            async def worker() -> None:
                while True:
                    try:
                        queue.get_nowait()
                    except asyncio.QueueEmpty:
                        return
                    await one()

            started = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(concurrency)))
            wall = time.perf_counter() - started
        return summarize(latencies, wall, count)

    return asyncio.run(run())


# --- part 1: classify ---------------------------------------------------------------------------


def bare_encode(backend: Any, image: bytes, *, batch: int, count: int) -> dict[str, float]:
    """Preprocess + encode in this process: the floor the service is measured against."""
    from liteembed.images import decode_image

    pil = decode_image(image)
    images = [pil] * batch
    backend.encode_image_batch(backend.preprocess_images(images))  # warm-up
    latencies = []
    started = time.perf_counter()
    for _ in range(count):
        t = time.perf_counter()
        backend.encode_image_batch(backend.preprocess_images(images))
        latencies.append(time.perf_counter() - t)
    wall = time.perf_counter() - started
    return summarize(latencies, wall, count * batch)


def decode_ms(image: bytes, repeats: int = 50) -> float:
    from liteembed.images import decode_image

    t = time.perf_counter()
    for _ in range(repeats):
        decode_image(image)
    return (time.perf_counter() - t) / repeats * 1000


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


# --- part 2: training ---------------------------------------------------------------------------


def four_shot_files(seed: int) -> list[tuple[str, Any]]:
    return [
        ("images", (f"e{i}.jpg", test_image(seed=seed * 10 + i), "image/jpeg")) for i in range(4)
    ]


def post_and_wait(url: str, names: list[str], seed: int, timeout: float) -> dict[str, Any]:
    """POST one 4-shot class per name (back to back), then wait for all to be ready."""
    import httpx

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
    # A fixed step count: the per-step time is the difference of two runs of known lengths.
    fixed = OptimizationConfig(step_rule="fixed", early_stopping=False)
    learn_class(backend, vocabulary, "warmup", images(99), config=fixed.with_(steps=2))
    for label, short in (("short", True), ("full", False)):
        config = fixed.with_(short_context=short)
        one = timed(
            lambda c=config: learn_class(
                backend, vocabulary, "zorb", images(1), config=c.with_(steps=1)
            )
        )  # noqa: E501
        many = timed(
            lambda c=config: learn_class(
                backend, vocabulary, "zorb", images(1), config=c.with_(steps=steps + 1)
            )
        )  # noqa: E501
        out[f"step_ms_{label}"] = (many - one) / steps * 1000
        out[f"setup_s_{label}"] = one
    out["step_speedup_short"] = out["step_ms_full"] / out["step_ms_short"]

    config = fixed.with_(steps=steps)
    requests = [ClassRequest(f"zorb{i}", images(i + 1)) for i in range(4)]
    alone = sum(
        timed(lambda r=r: learn_class(backend, vocabulary, r.name, r.images, config=config))
        for r in requests
    )
    together = timed(lambda: learn_classes(backend, vocabulary, requests, config=config))
    out.update(
        {
            "four_alone_s": alone,
            "four_batched_s": together,
            "batched_speedup": alone / together,
        }
    )
    return out


# --- part 3: scale ------------------------------------------------------------------------------


def wait_for_size(server: Server, size: int, tag: str, timeout: float = 600) -> float:
    """Until /classify ranks the new rows (the refresher picked up the generation)."""
    import httpx

    image = test_image(seed=5)
    want = min(size, 1000)
    started = time.perf_counter()
    with httpx.Client(base_url=server.url, timeout=300) as client:
        while time.perf_counter() - started < timeout:
            predictions = client.post(
                "/v1/classify",
                files={"image": ("q.jpg", image, "image/jpeg")},
                data={"top_k": want},
            ).json()["predictions"]
            if len(predictions) == want and all(
                p["label"].startswith(f"{tag}-") for p in predictions
            ):
                return time.perf_counter() - started
            time.sleep(0.2)
    raise RuntimeError(f"the server never showed {size} classes")


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
    from service.db import make_engine, make_session_factory

    engine = make_engine(server.database_url)
    factory = make_session_factory(engine)
    largest = args.sizes[-1]
    added = 0

    def add_one() -> None:
        nonlocal added
        insert_ready_classes(
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


# --- part 4: freshness --------------------------------------------------------------------------


def part_freshness(args: argparse.Namespace, workdir: Path, dim: int) -> dict[str, Any]:
    """/classify with the generation check against the same server without it, side by side."""
    database_url = args.database_url or f"sqlite:///{workdir / 'freshness.db'}"
    if not database_url.startswith("sqlite"):  # `serve` migrates only SQLite itself
        from service.core.config import Settings
        from service.db import migrate

        migrate(Settings(_env_file=None, database_url=database_url))  # type: ignore[call-arg]
    image = test_image()
    with (
        running(args, workdir, database_url=database_url) as checked,
        running(
            args, workdir, database_url=database_url, classify_checks_generation="false"
        ) as unchecked,
    ):
        replace_ready_classes(database_url, checked.model_id, 10, dim, "base")
        wait_for_size(checked, 10, "base")
        wait_for_size(unchecked, 10, "base")
        # Counts sized from the service's own latency, so each measurement lasts ~args.seconds.
        per_request_s = max(classify_sequential(checked.url, image, count=5)["p50_ms"] / 1000, 1e-4)
        pairs = int(min(max(args.seconds / (2 * per_request_s), 20), 2000))
        n16 = int(min(max(args.seconds / per_request_s, 64), 4000))
        rounds = []
        for r in range(args.rounds):
            c1 = classify_alternating(unchecked.url, checked.url, image, count=pairs)
            c16: dict[str, dict[str, float]] = {}
            order = [("on", checked), ("off", unchecked)]
            for key, server in order if r % 2 == 0 else order[::-1]:
                c16[key] = classify_concurrent(server.url, image, concurrency=16, count=n16)
            rounds.append(
                {
                    "c1_on": c1["sized"],
                    "c1_off": c1["reference"],
                    "c1_pair_ratio_median": c1["pair_ratio_median"],
                    "ratio_c1": c1["sized"]["p50_ms"] / c1["reference"]["p50_ms"],
                    "c16_on": c16["on"],
                    "c16_off": c16["off"],
                    "throughput_ratio_c16": c16["on"]["throughput_per_s"]
                    / c16["off"]["throughput_per_s"],
                }
            )
            last = rounds[-1]
            print(
                f"  round {r + 1}: c1 p50 {c1['sized']['p50_ms']:.2f} vs "
                f"{c1['reference']['p50_ms']:.2f} ms (x{last['ratio_c1']:.3f}); c16 "
                f"{c16['on']['throughput_per_s']:.1f} vs {c16['off']['throughput_per_s']:.1f}/s "
                f"(x{last['throughput_ratio_c16']:.3f})",
                flush=True,
            )
    return {
        "database": database_url.split(":", 1)[0].split("+", 1)[0],
        "classes": 10,
        "pairs_c1": pairs,
        "requests_c16": n16,
        "rounds": rounds,
        "ratio_c1": statistics.median(r["ratio_c1"] for r in rounds),
        "throughput_ratio_c16": statistics.median(r["throughput_ratio_c16"] for r in rounds),
    }


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
            from service.db import make_engine, make_session_factory

            engine = make_engine(server.database_url)
            insert_ready_classes(
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


def tenants_markdown(t: dict[str, Any]) -> list[str]:
    rounds = t["rounds"]

    def med(side: str) -> float:
        return statistics.median(r[side]["p50_ms"] for r in rounds)

    return [
        f"**Tenants** (/classify within one tenant, {t['classes']:,} classes in one matrix): "
        f"split over {t['tenants']:,} tenants against all in one tenant, side by side "
        f"(alternating, {t['pairs']} pairs per round); medians of {len(rounds)} rounds.",
        "",
        "| | one tenant | split | ratio |",
        "|---|---:|---:|---:|",
        f"| concurrency 1, p50 ms | {med('one'):.2f} | {med('split'):.2f} | **{t['ratio']:.3f}** "
        f"(median per-pair {statistics.median(r['pair_ratio_median'] for r in rounds):.3f}) |",
        "",
        "Per round: " + ", ".join(f"{r['ratio']:.3f}" for r in rounds) + ".",
        "",
    ]


def freshness_markdown(f: dict[str, Any]) -> list[str]:
    rounds = f["rounds"]

    def med(part: str, key: str) -> float:
        return statistics.median(r[part][key] for r in rounds)

    return [
        f"**Freshness** (/classify reads the class generation from the database before scoring, "
        f"so a class any process answered `ready` for is scored; {f['database']}, "
        f"{f['classes']} classes). Two servers on one database, with the check (default) and "
        f"with LITEEMBED_CLASSIFY_CHECKS_GENERATION=false, side by side; medians of "
        f"{len(rounds)} interleaved rounds.",
        "",
        "| | with check | without | ratio |",
        "|---|---:|---:|---:|",
        f"| concurrency 1, p50 ms (alternating, {f['pairs_c1']} pairs) | "
        f"{med('c1_on', 'p50_ms'):.2f} | {med('c1_off', 'p50_ms'):.2f} | "
        f"**{f['ratio_c1']:.3f}** (median per-pair "
        f"{statistics.median(r['c1_pair_ratio_median'] for r in rounds):.3f}) |",
        f"| concurrency 16, images/s ({f['requests_c16']} requests each) | "
        f"{med('c16_on', 'throughput_per_s'):.1f} | {med('c16_off', 'throughput_per_s'):.1f} | "
        f"**{f['throughput_ratio_c16']:.3f}** |",
        f"| concurrency 16, p50 ms | {med('c16_on', 'p50_ms'):.2f} | "
        f"{med('c16_off', 'p50_ms'):.2f} | |",
        "",
        "Per round (c=1 p50 ratio / c=16 throughput ratio): "
        + ", ".join(f"{r['ratio_c1']:.3f} / {r['throughput_ratio_c16']:.3f}" for r in rounds)
        + ".",
        "",
    ]


# --- report ---------------------------------------------------------------------------------


def markdown(result: dict[str, Any]) -> str:
    lines = [
        f"### {result['model']} ({result['device']}, {result['machine']['cores']} cores, "
        f"{result['machine']['cpu']}, torch {result['machine']['torch']}, "
        f"{result.get('torch_threads', result['machine']['torch_threads'])} torch thread(s))",
        "",
        f"Command: `{result['command']}`; {result['date']}; load average at start "
        f"{result['machine']['load_average_at_start']}.",
        "",
    ]
    c = result.get("classify")
    if c:
        rounds = c["rounds"]

        def med(part: str, key: str) -> float:
            return statistics.median(r[part][key] for r in rounds)

        lines += [
            "**Classify** (256x256 JPEG; bare = preprocess + encode in-process; service = "
            "POST /v1/classify over HTTP to a uvicorn subprocess, 10 classes; medians of "
            f"{len(rounds)} interleaved rounds)",
            "",
            "| path | p50 ms | p99 ms | images/s |",
            "|---|---:|---:|---:|",
        ]
        for part, label in (
            ("bare_b1", "bare model, batch 1"),
            ("service_c1", "service, concurrency 1"),
            ("bare_b32", "bare model, batch 32 (per batch)"),
            ("service_c16", "service, concurrency 16"),
        ):
            lines.append(
                f"| {label} | {med(part, 'p50_ms'):.2f} | {med(part, 'p99_ms'):.2f} | "
                f"{med(part, 'throughput_per_s'):.1f} |"
            )
        lines += [
            "",
            f"Service overhead at c=1 (p50 vs bare batch 1): **{c['overhead_c1'] * 100:+.1f}%** "
            f"(target <= +15%). Throughput at c=16 vs bare batch 32: "
            f"**{c['throughput_ratio_c16'] * 100:.0f}%** (target >= 85%). JPEG decode alone: "
            f"{c['decode_ms']:.2f} ms. Per round (overhead c=1 / throughput ratio c=16): "
            + ", ".join(
                f"{r['overhead_c1'] * 100:+.1f}% / {r['throughput_ratio_c16'] * 100:.0f}%"
                for r in rounds
            )
            + ".",
            "",
        ]
    t = result.get("training")
    if t:
        e = t["engine"]
        lines += [
            "**Training** (4-shot class, the engine's default settings; POST -> ready on a "
            "warm server with the embedded worker)",
            "",
            "| | POST -> ready s | steps run | engine step ms |",
            "|---|---:|---:|---:|",
            f"| short text context (default) | {t['short']['seconds_all']:.2f} | "
            f"{t['short']['steps_run'][0]} | {e['step_ms_short']:.1f} |",
            f"| full 77-token context | {t['full']['seconds_all']:.2f} | "
            f"{t['full']['steps_run'][0]} | {e['step_ms_full']:.1f} |",
            "",
            f"Per-step speed-up of the short context: {e['step_speedup_short']:.1f}x. Batched "
            f"training, 4 classes x {e['steps']} fixed steps: one by one "
            f"{e['four_alone_s']:.2f} s, "
            f"in one batch {e['four_batched_s']:.2f} s (**{e['batched_speedup']:.1f}x**). Through "
            f"the service, 4 classes posted together: all ready in "
            f"{t['four_posted']['seconds_all']:.2f} s (batch sizes seen: "
            f"{t['four_posted']['batch_sizes']}).",
            "",
        ]
    s = result.get("scale")
    if s:
        lines += scale_markdown(s, result["classifier_dtype"])
    f = result.get("freshness")
    if f:
        lines += freshness_markdown(f)
    tenants = result.get("tenants")
    if tenants:
        lines += tenants_markdown(tenants)
    if result.get("note"):
        lines += [result["note"], ""]
    return "\n".join(lines)


def scale_markdown(s: dict[str, Any], classifier_dtype: str) -> list[str]:
    """The scale table; results from before the reference server render as they used to."""
    rows = s["rows"]
    side_by_side = "reference" in s and all("reference_c1" in row for row in rows)
    if side_by_side:
        first = s["reference"]["classes"]
        ref_rss = [row["reference_rss_mb"] for row in rows]
        lines = [
            f"**Scale** (/classify at concurrency 1, top_k 5; class matrix {classifier_dtype}). "
            f"Side by side: a reference server holds {first:,} classes for the whole part, and "
            f"for each size one client alternates requests between it and the sized server "
            f"({rows[0]['pairs']} pairs per size). **ratio = p50 / reference p50 from the same "
            f"window** (the headline); the median of the per-pair ratios is shown next to it. "
            f"The first row compares two servers holding equal classes: its distance from 1.00 "
            f"is the noise floor.",
            "",
            f"| ready classes | p50 ms | p99 ms | reference ({first:,} classes) p50 ms, same "
            f"window | reference p99 ms | ratio | median per-pair ratio | API RSS MB |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for row in rows:
            c1, ref = row["c1"], row["reference_c1"]
            lines.append(
                f"| {row['classes']:,} | {c1['p50_ms']:.2f} | {c1['p99_ms']:.2f} | "
                f"{ref['p50_ms']:.2f} | {ref['p99_ms']:.2f} | **{row['ratio_to_first']:.2f}** | "
                f"{row['pair_ratio_median']:.2f} | {row['rss_mb']:.0f} |"
            )
        lines += [
            "",
            f"Reference server RSS over the part: {min(ref_rss):.0f}-{max(ref_rss):.0f} MB.",
        ]
    else:
        # Written before the reference server existed: sizes were measured one after another,
        # so the ratio is across windows (kept as it was printed then).
        lines = [
            f"**Scale** (/classify at concurrency 1, top_k 5; class matrix {classifier_dtype})",
            "",
            "| ready classes | p50 ms | p99 ms | ratio to 10 | API RSS MB |",
            "|---:|---:|---:|---:|---:|",
        ]
        for row in rows:
            lines.append(
                f"| {row['classes']:,} | {row['c1']['p50_ms']:.2f} | {row['c1']['p99_ms']:.2f} | "
                f"{row['ratio_to_first']:.2f} | {row['rss_mb']:.0f} |"
            )
    lines.append("")
    for key, what in (
        ("during_reloads", "a class became ready (appended to the matrix)"),
        ("during_rebuilds", "a class was deleted (dropped in place via the removal log)"),
    ):
        d = s.get(key)
        if d is None:
            continue
        if d.get("kind") == "rebuild":  # results from before the removal log
            what = "a class was deleted (full rebuild)"
        if "kind" not in d:  # results from before appends existed: every bump rebuilt
            what = "the matrix was rebuilt (a generation bump)"
        line = (
            f"While {what} every {d['reload_every_s']} s at {d['classes']:,} classes "
            f"({d['reloads']} times): p50 {d['c1']['p50_ms']:.2f} ms, "
            f"p99 {d['c1']['p99_ms']:.2f} ms"
        )
        ref = d.get("reference_c1")
        if ref is not None:
            line += (
                f"; reference in the same window: p50 {ref['p50_ms']:.2f} ms, "
                f"p99 {ref['p99_ms']:.2f} ms (p50 ratio "
                f"{d['c1']['p50_ms'] / ref['p50_ms']:.2f}, p99 ratio "
                f"{d['c1']['p99_ms'] / ref['p99_ms']:.2f})"
            )
        lines.append(line + ".")
    lines.append("")
    return lines


def add_server_arguments(
    parser: argparse.ArgumentParser, *, torch_threads: int | None = None
) -> None:
    """The options `Server` reads from its namespace (shared with benchmarks/profile_server.py)."""
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
    parser = argparse.ArgumentParser(prog="python -m benchmarks.perf", description=__doc__)
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
    parser.add_argument("--note", default="", help="what else ran on the machine")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--render", type=Path, default=None, help="re-print a result JSON")
    args = parser.parse_args(argv)
    if args.render is not None:
        print(markdown(json.loads(args.render.read_text())))
        return 0
    args.sizes = [int(s) for s in args.sizes.split(",")]
    parts = set(args.parts.split(","))

    import torch

    from liteembed.backend import load_backend
    from liteembed.vocab import load_vocabulary

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
    out = (
        args.out
        or RESULTS / f"perf-{args.model}{'-' + args.device if args.device != 'cpu' else ''}.json"
    )
    with tempfile.TemporaryDirectory(prefix="liteembed-perf-") as tmp:
        workdir = Path(tmp)
        if parts & {"classify", "scale", "training"}:
            print(f"[{args.model}] server (default settings)", flush=True)
            with running(args, workdir) as server:
                if "classify" in parts:
                    print("classify:", flush=True)
                    result["classify"] = part_classify(args, server, backend)
                if "training" in parts:
                    print("training (short context, via the service):", flush=True)
                    post_and_wait(server.url, ["warmup"], 90, timeout=1800)
                    short = post_and_wait(server.url, ["zorb"], 1, timeout=1800)
                    four = post_and_wait(
                        server.url, ["quib", "plax", "vorn", "gleb"], 2, timeout=3600
                    )
                    result["training"] = {"short": short, "four_posted": four}
                    print(
                        f"  ready in {short['seconds_all']:.2f} s; 4 in {four['seconds_all']:.2f} s"
                    )
                if "scale" in parts:
                    # A second server only for this part: the same-window baseline every size
                    # is divided by (two ViT-B-32 servers are ~3.5 GB together).
                    print("scale (reference server alongside):", flush=True)
                    with running(args, workdir) as reference:
                        result["scale"] = part_scale(
                            args, server, reference, int(backend.embed_dim)
                        )
        if "training" in parts:
            print("training (full context, via the service):", flush=True)
            with running(args, workdir, train_options='{"short_context": false}') as server:
                post_and_wait(server.url, ["warmup"], 90, timeout=1800)
                result["training"]["full"] = post_and_wait(server.url, ["zorb"], 1, timeout=3600)
            print("training (engine, in-process):", flush=True)
            result["training"]["engine"] = engine_training(backend, vocabulary, args.train_steps)
        if "freshness" in parts:
            print("freshness (with and without the per-request generation check):", flush=True)
            result["freshness"] = part_freshness(args, workdir, int(backend.embed_dim))
        if "tenants" in parts:
            print("tenants (one tenant among many against one tenant of every class):", flush=True)
            result["tenants"] = part_tenants(args, workdir, int(backend.embed_dim))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    table = markdown(result)
    out.with_suffix(".md").write_text(table + "\n")
    print()
    print(table)
    print(f"written: {out} and {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
