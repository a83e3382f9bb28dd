"""`liteembed serve` as a real process (uvicorn, SQLite, embedded worker) for the tests of the
HTTP client, the CLI and the admin page."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from cli import serve_process

REPO = serve_process.REPO
SERVE_COMMAND = serve_process.command("serve")


@dataclass(frozen=True)
class LiveServer:
    url: str
    admin_key: str
    client_key: str
    log_path: Path
    # The `serve` process itself, for tests that kill it.
    process: serve_process.Child | None = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]


@contextmanager
def running_server(
    workdir: Path, cache_dir: Path, *, env: dict[str, str] | None = None
) -> Iterator[LiveServer]:
    """Start the server on a free port with an admin and a client key; stop it on exit."""
    admin_key = "live-admin-key-0123456789"
    client_key = "live-client-key-0123456789"
    settings = {
        "LITEEMBED_DATABASE_URL": f"sqlite:///{workdir / 'liteembed.db'}",
        "LITEEMBED_MODEL": "liteembed-tiny",
        "LITEEMBED_PRETRAINED": "random",
        "LITEEMBED_DEVICE": "cpu",
        "LITEEMBED_CACHE_DIR": str(cache_dir),
        "LITEEMBED_ADMIN_KEYS": admin_key,
        "LITEEMBED_CLIENT_KEYS": client_key,
        "LITEEMBED_TRAIN_STEPS": "60",
        "LITEEMBED_HEARTBEAT_SECONDS": "0.2",
        "LITEEMBED_CLASSIFIER_REFRESH_SECONDS": "0.2",
        "LITEEMBED_MAX_IMAGE_BYTES": "200000",
        "LITEEMBED_TORCH_THREADS": "1",
    }
    process_env = serve_process.environment(
        settings | (env or {}) | {"PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    )
    log_path = workdir / "server.log"
    # The working directory (where a stray .env would be read) is the test's own.
    with serve_process.serving(env=process_env, log_path=log_path, cwd=workdir) as server:
        yield LiveServer(
            url=server.url,
            admin_key=admin_key,
            client_key=client_key,
            log_path=log_path,
            process=server.process,
        )
