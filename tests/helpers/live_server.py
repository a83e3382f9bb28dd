"""`liteembed serve` as a real process (uvicorn, SQLite, embedded worker) for the tests of the
HTTP client, the CLI and the admin page."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[2]
SERVE_COMMAND = [sys.executable, "-m", "cli.main", "serve"]


@dataclass(frozen=True)
class LiveServer:
    url: str
    admin_key: str
    client_key: str
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def running_server(
    workdir: Path, cache_dir: Path, *, env: dict[str, str] | None = None
) -> Iterator[LiveServer]:
    """Start the server on a free port with an admin and a client key; stop it on exit."""
    port = free_port()
    server = LiveServer(
        url=f"http://127.0.0.1:{port}",
        admin_key="live-admin-key-0123456789",
        client_key="live-client-key-0123456789",
        log_path=workdir / "server.log",
    )
    settings = {
        "LITEEMBED_DATABASE_URL": f"sqlite:///{workdir / 'liteembed.db'}",
        "LITEEMBED_MODEL": "liteembed-tiny",
        "LITEEMBED_PRETRAINED": "random",
        "LITEEMBED_DEVICE": "cpu",
        "LITEEMBED_CACHE_DIR": str(cache_dir),
        "LITEEMBED_ADMIN_KEYS": server.admin_key,
        "LITEEMBED_CLIENT_KEYS": server.client_key,
        "LITEEMBED_TRAIN_STEPS": "60",
        "LITEEMBED_HEARTBEAT_SECONDS": "0.2",
        "LITEEMBED_CLASSIFIER_REFRESH_SECONDS": "0.2",
        "LITEEMBED_MAX_IMAGE_BYTES": "200000",
        "LITEEMBED_TORCH_THREADS": "1",
    }
    process_env = (
        {k: v for k, v in os.environ.items() if not k.startswith("LITEEMBED_")}
        | settings
        | (env or {})
        | {"PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    )
    # This checkout's code, while the working directory (where a stray .env would be read) is
    # the test's own.
    process_env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p
    )
    with open(server.log_path, "ab") as log:
        process = subprocess.Popen(
            [*SERVE_COMMAND, "--host", "127.0.0.1", "--port", str(port)],
            env=process_env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=workdir,
        )
    try:
        _wait_ready(server, process)
        yield server
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_ready(server: LiveServer, process: subprocess.Popen[bytes], timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"the server exited with {process.returncode}\n{server.log()}")
        try:
            if httpx.get(f"{server.url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"the server never became ready\n{server.log()}")
