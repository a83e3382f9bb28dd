"""`serve --workers 2`: an API process SIGKILLed while the supervisor waits on its health ping
is replaced within seconds (uvicorn's own supervisor waited out its 60 s ping timeout)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import httpx
import pytest

from cli import serve_process

pytestmark = [pytest.mark.slow, pytest.mark.redis]


def api_processes(parent: int) -> set[int]:
    """The supervisor's API processes (spawned children; not the resource tracker)."""
    found = set()
    for task in Path(f"/proc/{parent}/task").iterdir():
        for child in (task / "children").read_text().split():
            try:
                command = Path(f"/proc/{child}/cmdline").read_bytes()
            except FileNotFoundError:
                continue
            if b"spawn_main" in command:
                found.add(int(child))
    return found


def test_a_killed_api_process_is_replaced_within_seconds(
    tmp_path: Path, redis_server_url: str, redis_namespace: str, cache_dir: Path
) -> None:
    env = serve_process.environment(
        {
            "LITEEMBED_DATABASE_URL": f"sqlite:///{tmp_path / 'liteembed.db'}",
            "LITEEMBED_REDIS_URL": redis_server_url,
            "LITEEMBED_REDIS_NAMESPACE": redis_namespace,
            "LITEEMBED_MODEL": "liteembed-tiny",
            "LITEEMBED_PRETRAINED": "random",
            "LITEEMBED_DEVICE": "cpu",
            "LITEEMBED_CACHE_DIR": str(cache_dir),
            "LITEEMBED_TORCH_THREADS": "1",
            "OMP_NUM_THREADS": "1",
        }
    )
    serve_process.Child(["migrate"], env=env, log_path=tmp_path / "migrate.log").wait()
    with serve_process.serving(
        env=env, log_path=tmp_path / "serve.log", serve_args=["--workers", "2"]
    ) as server:
        deadline = time.monotonic() + 60
        while len(before := api_processes(server.pid)) < 2:
            assert time.monotonic() < deadline, server.log_tail()
            time.sleep(0.2)
        victim = min(before)
        # Stopped, it cannot answer: the supervisor's next ping to it waits. Killed during
        # that wait, it must still be noticed at once.
        os.kill(victim, signal.SIGSTOP)
        time.sleep(1.5)
        os.kill(victim, signal.SIGKILL)
        killed_at = time.monotonic()
        while not (api_processes(server.pid) - before):
            assert time.monotonic() - killed_at < 10, "not replaced within 10 s\n" + (
                server.log_tail()
            )
            time.sleep(0.1)
        replaced_after = time.monotonic() - killed_at
        assert len(api_processes(server.pid)) == 2
        assert httpx.get(f"{server.url}/healthz").status_code == 200
    assert replaced_after < 5
