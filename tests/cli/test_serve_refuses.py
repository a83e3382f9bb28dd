"""`liteembed serve` as a real process refuses to start, with a message saying what to do, when
its keys are placeholders or when it would serve open on every interface."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from cli.serve_process import free_port
from tests.helpers.live_server import REPO, SERVE_COMMAND

pytestmark = pytest.mark.slow


def serve(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run `liteembed serve ARGS` in an empty directory (no stray .env) until it exits; a server
    that starts instead of refusing runs into the timeout."""
    process_env = {k: v for k, v in os.environ.items() if not k.startswith("LITEEMBED_")} | {
        "LITEEMBED_DATABASE_URL": f"sqlite:///{tmp_path / 'liteembed.db'}",
        "PYTHONPATH": str(REPO),
        **env,
    }
    try:
        return subprocess.run(
            [*SERVE_COMMAND, "--port", str(free_port()), *args],
            env=process_env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"serve did not refuse to start:\n{exc.stderr!r}") from None


def test_serve_refuses_the_example_keys(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text(
        "LITEEMBED_ADMIN_KEYS=change-me-admin\nLITEEMBED_CLIENT_KEYS=change-me-client\n"
    )
    done = serve(tmp_path)
    assert done.returncode != 0
    assert "LITEEMBED_ADMIN_KEYS: key 1 is a placeholder" in done.stderr, done.stderr
    assert 'python -c "import secrets; print(secrets.token_urlsafe(32))"' in done.stderr
    assert "change-me-admin" not in done.stderr + done.stdout
    assert "Traceback" not in done.stderr


def test_serve_without_keys_refuses_every_interface(tmp_path: Path) -> None:
    done = serve(tmp_path, "--host", "0.0.0.0")
    assert done.returncode != 0
    assert "no API keys configured" in done.stderr, done.stderr
    assert "LITEEMBED_ALLOW_OPEN=true" in done.stderr
