"""`liteembed serve` against an empty PostgreSQL database (nobody ran `liteembed migrate`) is not
ready, and says what to run; after `liteembed migrate` it is."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from cli import serve_process
from tests.e2e import test_processes as processes

pytestmark = [pytest.mark.slow, pytest.mark.postgres]


def test_serve_on_an_unmigrated_database_is_not_ready_until_migrated(
    empty_postgres: str, tmp_path: Path, cache_dir: Path
) -> None:
    # No Redis: the embedded worker, so only the database decides.
    env = serve_process.environment(
        {
            "LITEEMBED_DATABASE_URL": empty_postgres,
            "LITEEMBED_MODEL": "liteembed-tiny",
            "LITEEMBED_PRETRAINED": "random",
            "LITEEMBED_DEVICE": "cpu",
            "LITEEMBED_CACHE_DIR": str(cache_dir),
            "OMP_NUM_THREADS": "1",
            "PYTHONUNBUFFERED": "1",
        }
    )
    procs = processes.Processes(tmp_path, env)
    try:
        port = serve_process.free_port()
        api = procs.start("api", "serve", "--port", str(port))
        base = f"http://127.0.0.1:{port}"

        def settled() -> Any:
            try:
                body = httpx.get(f"{base}/readyz", timeout=5).json()
            except httpx.HTTPError:
                return None
            return body if body["checks"].get("model") else None

        body = processes.wait_until(settled, 120, api, "the model never loaded")
        assert body["status"] == "not ready" and body["checks"]["schema"] is False, body
        assert "liteembed migrate" in body["detail"], body

        migrate = procs.start("migrate", "migrate")
        assert migrate.wait(timeout=120) == 0, processes.logs(migrate)
        response = httpx.get(f"{base}/readyz", timeout=5)
        assert response.status_code == 200, response.text
        assert response.json()["checks"]["schema"] is True
    finally:
        procs.stop_all()
