"""The hardening goals, measured against a real `liteembed serve` (PostgreSQL through a proxy
this script owns, the embedded worker, the tiny model): hostile bodies, thumbnails of a huge
upload, and classification while the database is unreachable. Prints a table, writes JSON.

    python -m benchmarks.hardening_check --out benchmarks/results/hardening_check.json
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from PIL import Image
from sqlalchemy.engine import make_url

from benchmarks.chaos_soak import ADMIN_KEY, AUTH, DEFAULT_POSTGRES, own_database, png
from benchmarks.tcp_proxy import TcpProxy
from cli import serve_process

JSON_HEADERS = {**AUTH, "Content-Type": "application/json"}


@contextmanager
def healthz_watch(url: str) -> Iterator[dict[str, float]]:
    """The longest /healthz answer time while the block runs (polled back to back)."""
    worst = {"max_s": 0.0, "polls": 0}
    stop = threading.Event()

    def poll() -> None:
        with httpx.Client(timeout=60) as http:
            while not stop.is_set():
                start = time.perf_counter()
                http.get(f"{url}/healthz")
                worst["max_s"] = max(worst["max_s"], time.perf_counter() - start)
                worst["polls"] += 1
                time.sleep(0.02)

    thread = threading.Thread(target=poll)
    thread.start()
    try:
        yield worst
    finally:
        stop.set()
        thread.join()


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def timed(send: Callable[[], httpx.Response]) -> tuple[httpx.Response, float]:
    start = time.perf_counter()
    answer = send()
    return answer, time.perf_counter() - start


def hostile_bodies(url: str, pid: int) -> list[dict[str, Any]]:
    image = json.dumps(base64.b64encode(png(1)).decode())
    rows = []

    def copies(count: int) -> str:
        return ",".join(['"a"'] * count)

    cases = [
        (
            "2,000,000 duplicate labels (JSON)",
            "/v1/classify",
            f'{{"image": {image}, "labels": [{copies(2_000_000)}]}}',
        ),
        (
            "10,000,000 duplicate labels (JSON)",
            "/v1/classify",
            f'{{"image": {image}, "labels": [{copies(10_000_000)}]}}',
        ),
        (
            "200 copies of one hint (JSON)",
            "/v1/classes",
            f'{{"name": "zorb", "images": [{image}], "hints": [{copies(200)}]}}',
        ),
        (
            "3,000,000 copies of one hint (JSON)",
            "/v1/classes",
            f'{{"name": "zorb", "images": [{image}], "hints": [{copies(3_000_000)}]}}',
        ),
    ]
    for what, path, body in cases:
        data = body.encode()
        before = peak_rss_mb(pid)
        with healthz_watch(url) as health:
            answer, seconds = timed(
                lambda p=path, d=data: httpx.post(
                    f"{url}{p}", content=d, headers=JSON_HEADERS, timeout=120
                )
            )
        rows.append(
            {
                "case": what,
                "route": path,
                "body_mb": round(len(data) / 1e6, 1),
                "status": answer.status_code,
                "answer_s": round(seconds, 3),
                "healthz_max_s": round(health["max_s"], 3),
                "peak_rss_growth_mb": round(peak_rss_mb(pid) - before, 1),
                "detail": answer.json().get("detail", "")[:80],
            }
        )
    multipart = {"name": "zorb", "hints": ["a"] * 200}
    files = [("images", ("a.png", png(1), "image/png"))]
    with healthz_watch(url) as health:
        answer, seconds = timed(
            lambda: httpx.post(f"{url}/v1/classes", data=multipart, files=files, headers=AUTH)
        )
    rows.append(
        {
            "case": "200 copies of one hint (multipart)",
            "route": "/v1/classes",
            "status": answer.status_code,
            "answer_s": round(seconds, 3),
            "healthz_max_s": round(health["max_s"], 3),
            "detail": answer.json().get("detail", "")[:80],
        }
    )
    return rows


def deep_json(url: str, depth: int) -> list[dict[str, Any]]:
    body = ('{"images": ' + "[" * depth + "]" * depth + "}").encode()
    rows = []
    routes = ["/v1/classify", "/v1/classify:json", "/v1/classes", "/v1/classes:json"]
    routes += ["/v1/embeddings", "/v1/keys"]
    for path in routes:
        answer = httpx.post(f"{url}{path}", content=body, headers=JSON_HEADERS, timeout=60)
        rows.append(
            {
                "case": f"{depth}-deep JSON",
                "route": path,
                "status": answer.status_code,
                "json": answer.headers.get("content-type", "").startswith("application/json"),
                "request_id": bool(answer.headers.get("x-request-id")),
                "detail": str(answer.json().get("detail", ""))[:80],
            }
        )
    return rows


def huge_png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (6000, 6000), (20, 160, 40)).save(buffer, format="PNG")
    return buffer.getvalue()


def thumbnails(url: str) -> list[dict[str, Any]]:
    data = huge_png()
    created = httpx.post(
        f"{url}/v1/classes",
        data={"name": "huge"},
        files=[("images", ("h.png", data, "image/png"))],
        headers=AUTH,
        timeout=60,
    )
    created.raise_for_status()
    thumb = f"{url}/v1/classes/{created.json()['id']}/thumbnail"
    rows = []
    with httpx.Client(headers=AUTH, timeout=60) as http:
        start = time.perf_counter()
        statuses = [http.get(thumb, params={"size": 16}).status_code for _ in range(16)]
        rows.append(
            {
                "case": f"16 sequential thumbnails, 36 Mpx PNG of {len(data) // 1000} KB",
                "seconds": round(time.perf_counter() - start, 3),
                "all_200": statuses == [200] * 16,
            }
        )
    # A second class, so the concurrent requests start from nothing cached.
    created = httpx.post(
        f"{url}/v1/classes",
        data={"name": "huge two"},
        files=[("images", ("h.png", data, "image/png"))],
        headers=AUTH,
        timeout=60,
    )
    thumb = f"{url}/v1/classes/{created.json()['id']}/thumbnail"
    start = time.perf_counter()
    with ThreadPoolExecutor(32) as pool:
        statuses = list(
            pool.map(
                lambda _: (
                    httpx.get(thumb, params={"size": 16}, headers=AUTH, timeout=60).status_code
                ),
                range(32),
            )
        )
    rows.append(
        {
            "case": "32 concurrent thumbnails of another such class",
            "seconds": round(time.perf_counter() - start, 3),
            "all_200": statuses == [200] * 32,
        }
    )
    return rows


def classify_while_database_away(url: str, proxy: TcpProxy) -> dict[str, Any]:
    files = [("images", (f"{i}.png", png(100 + i), "image/png")) for i in range(3)]
    created = httpx.post(
        f"{url}/v1/classes", data={"name": "zorb"}, files=files, headers=AUTH, timeout=60
    )
    created.raise_for_status()
    class_url = f"{url}/v1/classes/{created.json()['id']}"
    deadline = time.monotonic() + 120
    while httpx.get(class_url, headers=AUTH).json()["status"] != "ready":
        if time.monotonic() > deadline:
            raise RuntimeError("the class never became ready")
        time.sleep(0.2)
    image = {"image": ("q.png", png(100), "image/png")}
    httpx.post(f"{url}/v1/classify", files=image, headers=AUTH).raise_for_status()
    proxy.cut()
    try:
        answers = [
            timed(lambda: httpx.post(f"{url}/v1/classify", files=image, headers=AUTH, timeout=30))
            for _ in range(10)
        ]
        write = httpx.post(f"{url}/v1/classes", data={"name": "tea"}, files=files[:1], headers=AUTH)
    finally:
        proxy.restore()
    return {
        "case": "10 /v1/classify with PostgreSQL unreachable",
        "answered_200": sum(1 for a, _ in answers if a.status_code == 200),
        "marked_stale": sum(1 for a, _ in answers if a.headers.get("x-liteembed-stale")),
        "zorb_first": sum(
            1
            for a, _ in answers
            if a.status_code == 200 and a.json()["predictions"][0]["label"] == "zorb"
        ),
        "slowest_s": round(max(s for _, s in answers), 3),
        "register_meanwhile": write.status_code,
    }


def run(postgres_url: str, workdir: Path) -> dict[str, Any]:
    workdir.mkdir(parents=True, exist_ok=True)
    with own_database(postgres_url) as database_url:
        target = make_url(database_url)
        proxy = TcpProxy((target.host or "127.0.0.1", target.port or 5432))
        proxy.start()
        through = target.set(host="127.0.0.1", port=proxy.port)
        env = serve_process.environment(
            {
                "LITEEMBED_DATABASE_URL": through.render_as_string(hide_password=False),
                "LITEEMBED_MODEL": "liteembed-tiny",
                "LITEEMBED_PRETRAINED": "random",
                "LITEEMBED_DEVICE": "cpu",
                "LITEEMBED_CACHE_DIR": str(serve_process.REPO / ".liteembed-cache" / "soak"),
                "LITEEMBED_ADMIN_KEYS": ADMIN_KEY,
                "LITEEMBED_TRAIN_STEPS": "30",
                "LITEEMBED_TORCH_THREADS": "1",
                "OMP_NUM_THREADS": "1",
            }
        )
        try:
            migrate = serve_process.Child(["migrate"], env=env, log_path=workdir / "migrate.log")
            if migrate.wait() != 0:
                raise RuntimeError(migrate.log_tail())
            with serve_process.serving(env=env, log_path=workdir / "serve.log") as server:
                return {
                    "hostile_bodies": hostile_bodies(server.url, server.pid),
                    "deep_json": deep_json(server.url, 5_000) + deep_json(server.url, 100_000),
                    "thumbnails": thumbnails(server.url),
                    "database_outage": classify_while_database_away(server.url, proxy),
                    "baseline_rss_mb": round(peak_rss_mb(server.pid), 1),
                }
        finally:
            proxy.cut()


def print_tables(report: dict[str, Any]) -> None:
    for section, rows in report.items():
        if not isinstance(rows, list | dict):
            continue
        rows = rows if isinstance(rows, list) else [rows]
        print(f"\n{section}")
        columns = list(dict.fromkeys(k for row in rows for k in row))
        widths = {c: max(len(c), *(len(str(row.get(c, ""))) for row in rows)) for c in columns}
        print("  ".join(c.ljust(widths[c]) for c in columns))
        for row in rows:
            print("  ".join(str(row.get(c, "")).ljust(widths[c]) for c in columns))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--postgres-url", default=os.environ.get("LITEEMBED_TEST_POSTGRES_URL", DEFAULT_POSTGRES)
    )
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/hardening_check.json"))
    args = parser.parse_args(argv)
    report = run(args.postgres_url, Path("benchmarks/results/tmp/hardening_check"))
    print_tables(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwritten: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
