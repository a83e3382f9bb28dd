"""Chaos soak: the production shape kept busy while its parts are killed, then counted.

It brings up a database of its own on the local PostgreSQL server (reached through a TCP proxy it
owns, so an outage is a cut of that proxy and the shared server keeps running), a redis-server of
its own on a free port, `liteembed serve --workers 2` and one `liteembed worker`. While clients
keep registering classes and classifying images, it SIGKILLs the worker (restarted two seconds
later, as a process manager would) and API processes (the supervisor replaces them), restarts
Redis (empty: no persistence) and cuts PostgreSQL for a while.

At the end it waits for every accepted class to finish and reports: accepted / ready / failed /
lost (accepted, then missing or never finished) / duplicated (one registration stored twice),
5xx answers inside and outside the disruption windows, connection errors, stale answers, and
each disruption's recovery time, as a table and as JSON.

    python -m benchmarks.chaos_soak --seconds 600 --out benchmarks/results/chaos_soak.json
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import shutil
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from benchmarks.chaos_log import Call, Disruption, Log, print_table, soak_report
from benchmarks.tcp_proxy import TcpProxy
from cli import serve_process

ADMIN_KEY = "soak-admin-key-0123456789"
AUTH = {"Authorization": f"Bearer {ADMIN_KEY}"}
DEFAULT_POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
EVENTS = ("db_outage", "kill_api", "restart_redis", "kill_worker")


@dataclass
class SoakOptions:
    seconds: float = 600.0
    outage_seconds: float = 15.0
    register_every_s: float = 1.0
    classify_every_s: float = 0.2
    drain_seconds: float = 180.0
    seed: int = 0
    postgres_url: str = DEFAULT_POSTGRES
    workdir: Path = Path("benchmarks/results/tmp/chaos_soak")
    cache_dir: Path = serve_process.REPO / ".liteembed-cache" / "soak"


def png(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    colour = rng.integers(0, 256, size=3)
    pixels = np.clip(colour + rng.normal(0, 12, size=(48, 48, 3)), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


@contextmanager
def own_database(server_url: str) -> Iterator[str]:
    """A fresh database on `server_url`'s server, dropped afterwards."""
    name = f"liteembed_soak_{uuid.uuid4().hex[:8]}"
    admin = create_engine(server_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(server_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


class OwnRedis:
    """A redis-server without persistence on a free port; `restart` loses everything queued."""

    def __init__(self, workdir: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise SystemExit("chaos soak: redis-server is not installed")
        self.binary, self.workdir = binary, workdir
        self.port = serve_process.free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        args += ["--appendonly", "no", "--daemonize", "no", "--dir", str(self.workdir)]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL)
        import redis

        client = redis.Redis(port=self.port)
        for _ in range(200):
            try:
                client.ping()
                return
            except redis.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()


def api_processes(parent: int) -> list[int]:
    """The API processes of `serve --workers N` (its spawned children)."""
    found = []
    for task in Path(f"/proc/{parent}/task").iterdir():
        for child in (task / "children").read_text().split():
            try:
                if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes():
                    found.append(int(child))
            except FileNotFoundError:
                continue
    return sorted(found)


def wait_for(check: Callable[[], bool], timeout: float, poll: float = 0.1) -> float | None:
    """Seconds until `check()` held, or None after `timeout`."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        try:
            if check():
                return time.monotonic() - start
        except Exception:  # a probe that cannot connect yet
            pass
        time.sleep(poll)
    return None


def run_soak(options: SoakOptions) -> dict[str, Any]:
    workdir = options.workdir / time.strftime("%Y%m%d-%H%M%S")
    workdir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(options.seed)
    log = Log()
    with ExitStack() as stack:
        direct_url = stack.enter_context(own_database(options.postgres_url))
        target = make_url(direct_url)
        proxy = TcpProxy((target.host or "127.0.0.1", target.port or 5432))
        proxy.start()
        stack.callback(proxy.cut)
        redis_server = OwnRedis(workdir)
        redis_server.start()
        stack.callback(redis_server.kill)
        env = serve_process.environment(
            {
                "LITEEMBED_DATABASE_URL": target.set(
                    host="127.0.0.1", port=proxy.port
                ).render_as_string(hide_password=False),
                "LITEEMBED_REDIS_URL": redis_server.url,
                "LITEEMBED_MODEL": "liteembed-tiny",
                "LITEEMBED_PRETRAINED": "random",
                "LITEEMBED_DEVICE": "cpu",
                "LITEEMBED_CACHE_DIR": str(options.cache_dir),
                "LITEEMBED_ADMIN_KEYS": ADMIN_KEY,
                "LITEEMBED_TRAIN_STEPS": "30",
                "LITEEMBED_TORCH_THREADS": "1",
                "LITEEMBED_HEARTBEAT_SECONDS": "0.5",
                "LITEEMBED_STALE_AFTER_SECONDS": "5",
                "LITEEMBED_QUEUED_RESEND_SECONDS": "5",
                "LITEEMBED_RECONCILE_INTERVAL_SECONDS": "1",
                "LITEEMBED_CLASSIFIER_REFRESH_SECONDS": "0.5",
                "LITEEMBED_BROKER_HEARTBEAT_TIMEOUT_MS": "3000",
                "OMP_NUM_THREADS": "1",
                "PYTHONUNBUFFERED": "1",
            }
        )
        migrate = serve_process.Child(["migrate"], env=env, log_path=workdir / "migrate.log")
        if migrate.wait() != 0:
            raise RuntimeError(f"migrate failed:\n{migrate.log_tail()}")
        server = stack.enter_context(
            serve_process.serving(
                env=env, log_path=workdir / "serve.log", serve_args=["--workers", "2"]
            )
        )
        workers: list[serve_process.Child] = []

        def start_worker() -> None:
            workers.append(
                serve_process.Child(
                    ["worker"], env=env, log_path=workdir / f"worker-{len(workers)}.log"
                )
            )

        start_worker()
        stack.callback(lambda: serve_process.stop(*workers, grace_s=10))
        started = time.monotonic()
        stop = threading.Event()
        threads = [
            threading.Thread(target=_register_loop, args=(server.url, options, log, stop)),
            threading.Thread(target=_classify_loop, args=(server.url, options, log, stop)),
        ]
        for thread in threads:
            thread.start()
        try:
            plan = _plan(options, rng)
            for at, kind in plan:
                time.sleep(max(0.0, started + at - time.monotonic()))
                disruption = Disruption(kind, time.monotonic())
                if kind == "db_outage":
                    proxy.cut()
                    time.sleep(options.outage_seconds)
                    proxy.restore()
                    disruption.end = time.monotonic()
                    disruption.recovered_s = wait_for(
                        lambda: _writes_and_fresh_reads(server.url), 60
                    )
                elif kind == "kill_api":
                    before = api_processes(server.pid)
                    os.kill(rng.choice(before), signal.SIGKILL)
                    wait_for(lambda b=before: len(set(api_processes(server.pid)) - set(b)) > 0, 60)
                    disruption.end = time.monotonic()
                    disruption.recovered_s = wait_for(
                        lambda: httpx.get(f"{server.url}/healthz", timeout=2).is_success, 60
                    )
                elif kind == "restart_redis":
                    redis_server.kill()
                    time.sleep(1.0)
                    redis_server.start()
                    disruption.end = time.monotonic()
                    disruption.recovered_s = wait_for(
                        lambda: httpx.get(f"{server.url}/readyz", timeout=5).status_code == 200,
                        60,
                    )
                else:  # kill_worker
                    workers[-1].send_signal(signal.SIGKILL)
                    workers[-1].wait()
                    time.sleep(2.0)
                    start_worker()
                    disruption.end = time.monotonic()
                    disruption.recovered_s = _next_ready_after(direct_url, time.time(), 60)
                log.disruptions.append(disruption)
                if workers[-1].poll() is not None:  # a worker that exited by itself: restart it
                    start_worker()
            time.sleep(max(0.0, started + options.seconds - time.monotonic()))
        finally:
            stop.set()
            for thread in threads:
                thread.join()
        drained = wait_for(
            lambda: _unfinished(direct_url, log.accepted) == 0, options.drain_seconds, poll=1.0
        )
        settings = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(options).items()}
        report = soak_report(_rows(direct_url), log, settings, time.monotonic() - started, drained)
        report["logs"] = str(workdir)
    return report


def _plan(options: SoakOptions, rng: random.Random) -> list[tuple[float, str]]:
    """Each kind of disruption at least once, in random order, spread over the run (the last
    leaving time to recover before the load stops)."""
    rounds = max(1, int(options.seconds // 120))
    kinds = [kind for _ in range(rounds) for kind in rng.sample(EVENTS, len(EVENTS))]
    usable = options.seconds * 0.8
    step = usable / (len(kinds) + 1)
    return [(step * (i + 1) + rng.uniform(-0.2, 0.2) * step, kind) for i, kind in enumerate(kinds)]


def _register_loop(url: str, options: SoakOptions, log: Log, stop: threading.Event) -> None:
    """Register one new class per period; a name is retried until it is accepted (a 409 after
    an unanswered try means that try landed)."""
    number = 0
    with httpx.Client(base_url=url, headers=AUTH, timeout=30) as http:
        while not stop.is_set():
            number += 1
            name = f"soak {number}"
            files = [("images", (f"{i}.png", png(number * 10 + i), "image/png")) for i in range(2)]
            unanswered = False
            while not stop.is_set():
                start = time.monotonic()
                try:
                    answer = http.post("/v1/classes", data={"name": name}, files=files)
                except httpx.HTTPError:
                    log.call(Call("register", start, time.monotonic(), None))
                    unanswered = True
                    time.sleep(0.5)
                    continue
                log.call(Call("register", start, time.monotonic(), answer.status_code))
                if answer.status_code == 202 or (answer.status_code == 409 and unanswered):
                    with log.lock:
                        log.accepted.add(name)
                    break
                if answer.status_code < 500:  # refused: nothing was stored, nothing to retry
                    break
                time.sleep(1.0)
            stop.wait(options.register_every_s)


def _classify_loop(url: str, options: SoakOptions, log: Log, stop: threading.Event) -> None:
    image = {"image": ("q.png", png(1), "image/png")}
    with httpx.Client(base_url=url, headers=AUTH, timeout=30) as http:
        while not stop.is_set():
            start = time.monotonic()
            try:
                answer = http.post("/v1/classify", files=image)
                stale = answer.headers.get("x-liteembed-stale") == "true"
                log.call(Call("classify", start, time.monotonic(), answer.status_code, stale))
            except httpx.HTTPError:
                log.call(Call("classify", start, time.monotonic(), None))
            stop.wait(options.classify_every_s)


def _writes_and_fresh_reads(url: str) -> bool:
    listed = httpx.get(f"{url}/v1/classes", params={"limit": 1}, headers=AUTH, timeout=5)
    image = {"image": ("q.png", png(2), "image/png")}
    answer = httpx.post(f"{url}/v1/classify", files=image, headers=AUTH, timeout=5)
    return (
        listed.status_code == 200
        and answer.status_code == 200
        and ("x-liteembed-stale" not in answer.headers)
    )


def _next_ready_after(database_url: str, since: float, timeout: float) -> float | None:
    """Seconds from `since` (epoch) until a class became ready after it."""
    engine = create_engine(database_url)
    try:
        query = text(
            "SELECT min(extract(epoch from updated_at)) FROM classes "
            "WHERE status = 'ready' AND extract(epoch from updated_at) > :since"
        )

        def found() -> bool:
            with engine.connect() as connection:
                return connection.execute(query, {"since": since}).scalar() is not None

        waited = wait_for(found, timeout, poll=0.5)
        if waited is None:
            return None
        with engine.connect() as connection:
            return float(connection.execute(query, {"since": since}).scalar()) - since
    finally:
        engine.dispose()


def _rows(database_url: str) -> list[tuple[str, str]]:
    engine = create_engine(database_url)
    try:
        with engine.connect() as connection:
            return [tuple(r) for r in connection.execute(text("SELECT name, status FROM classes"))]
    finally:
        engine.dispose()


def _unfinished(database_url: str, accepted: set[str]) -> int:
    finished = {n for n, s in _rows(database_url) if s in ("ready", "failed")}
    return len(accepted - finished)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=600)
    parser.add_argument("--outage-seconds", type=float, default=15)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get("LITEEMBED_TEST_POSTGRES_URL", DEFAULT_POSTGRES),
        help="a PostgreSQL server the soak may create (and drop) a database on",
    )
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/chaos_soak.json"))
    args = parser.parse_args(argv)
    options = SoakOptions(
        seconds=args.seconds,
        outage_seconds=args.outage_seconds,
        seed=args.seed,
        postgres_url=args.postgres_url,
    )
    report = run_soak(options)
    print_table(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"written: {args.out}")
    clean = not (report["lost"] or report["duplicated"] or report["5xx_outside_windows"])
    return 0 if clean else 1


if __name__ == "__main__":
    raise SystemExit(main())
