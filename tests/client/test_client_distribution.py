"""The client distribution (`client/`) alone: installed in a fresh virtual environment, it brings
no server package and no torch, and its library and its command line talk to a running server."""

from __future__ import annotations

import json
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from tests.helpers.images import COLOURS, image_bytes
from tests.helpers.live_server import LiveServer

REPO = Path(__file__).resolve().parents[2]
# What a client machine must not get: the engine's and the server's dependencies.
SERVER_PACKAGES = {
    "torch",
    "torchvision",
    "open-clip-torch",
    "liteembed",
    "liteembed-server",
    "fastapi",
    "uvicorn",
    "sqlalchemy",
    "alembic",
    "psycopg",
    "dramatiq",
    "redis",
}


@pytest.fixture(scope="module")
def client_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtual environment with `liteembed-client[cli]` installed from a wheel of
    `client/` (its dependencies come from the package index, as on a user's machine)."""
    root = tmp_path_factory.mktemp("client-venv")
    wheels = root / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
         "-w", str(wheels), str(REPO / "client")],
        check=True,
    )  # fmt: skip
    env_dir = root / "env"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = env_dir / "bin" / "python"
    wheel = next(wheels.glob("liteembed_client-*.whl"))
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", f"{wheel}[cli]"],
        check=True,
        cwd=root,  # not the repository: nothing of it is importable from here
    )
    return env_dir


def installed(env_dir: Path) -> set[str]:
    listing = subprocess.run(
        [str(env_dir / "bin" / "python"), "-m", "pip", "list", "--format", "json"],
        capture_output=True,
        text=True,
        check=True,
    )
    return {p["name"].lower().replace("_", "-") for p in json.loads(listing.stdout)}


def test_the_client_installs_without_any_server_package(client_venv: Path) -> None:
    packages = installed(client_venv)
    assert "liteembed-client" in packages
    assert {"httpx", "pydantic"} <= packages
    assert packages & SERVER_PACKAGES == set()


def test_the_installed_client_calls_a_running_server(
    client_venv: Path, live_server: LiveServer, tmp_path: Path
) -> None:
    image = tmp_path / "green.png"
    image.write_bytes(image_bytes(COLOURS["green"]))
    code = (
        "import sys\n"
        "from liteembed_client import Client\n"
        "with Client(sys.argv[1], sys.argv[2]) as client:\n"
        "    result = client.classify(sys.argv[3], labels=['red', 'green'])\n"
        "    print(result.top.label if result.top else None)\n"
        "print(sorted(m for m in ('torch', 'service', 'liteembed') if m in sys.modules))\n"
    )
    run = subprocess.run(
        [str(client_venv / "bin" / "python"), "-c", code,
         live_server.url, live_server.client_key, str(image)],
        capture_output=True, text=True, cwd=tmp_path, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    label, modules = run.stdout.strip().splitlines()
    assert label in ("red", "green")
    assert modules == "[]"
    cli = subprocess.run(
        [str(client_venv / "bin" / "liteembed-client"), "classify", str(image),
         "--labels", "red", "green", "--json",
         "--url", live_server.url, "--key", live_server.client_key],
        capture_output=True, text=True, cwd=tmp_path, timeout=120,
    )  # fmt: skip
    assert cli.returncode == 0, cli.stderr
    answer = json.loads(cli.stdout.splitlines()[0])
    assert answer["predictions"][0]["label"] in ("red", "green")
