"""The image's torch layer is keyed on versions given in the Dockerfile (so that a change of
another dependency does not download torch again); they must be constraints.txt's pins."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_dockerfile_torch_versions_are_the_pinned_ones() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    constraints = (ROOT / "constraints.txt").read_text()
    for package, arg in (("torch", "TORCH_VERSION"), ("torchvision", "TORCHVISION_VERSION")):
        pinned = re.search(rf"^{package}==(\S+)$", constraints, re.M)
        given = re.search(rf"^ARG {arg}=(\S+)$", dockerfile, re.M)
        assert pinned and given, package
        assert given.group(1) == pinned.group(1), f"Dockerfile {arg} != constraints.txt {package}"


def test_env_example_names_the_default_model() -> None:
    """Compose users start from .env.example: it must not pick another model than the one the
    README and the settings call the default."""
    from service.core.config import Settings

    example = (ROOT / ".env.example").read_text()
    named = re.search(r"^LITEEMBED_MODEL=(\S+)$", example, re.M)
    assert named and named.group(1) == Settings.model_fields["model"].default


def test_the_gpu_compose_file_gives_the_api_and_the_worker_a_gpu() -> None:
    import yaml

    services = yaml.safe_load((ROOT / "docker-compose.gpu.yml").read_text())["services"]
    for name in ("api", "worker"):
        devices = services[name]["deploy"]["resources"]["reservations"]["devices"]
        assert devices[0]["driver"] == "nvidia" and devices[0]["capabilities"] == ["gpu"], name
    text = (ROOT / "docker-compose.gpu.yml").read_text()
    assert "each with its own GPU" not in text  # --scale cannot do that


def test_the_compose_version_it_needs_is_said() -> None:
    compose = (ROOT / "docker-compose.yml").read_text()
    assert "required: false" in compose  # the long env_file syntax...
    assert "v2.24" in compose.split("services:")[0]  # ...needs this, said at the top
    assert "v2.24" in (ROOT / "docs" / "deployment.md").read_text()


def test_the_smoke_script_builds_and_runs_without_compose() -> None:
    """Compose is checked only where the compose steps start: `docker build` and `docker run`
    run without it."""
    script = (ROOT / "scripts" / "container_smoke.sh").read_text()
    first_compose_check = script.index("compose_ok;")
    assert "docker compose version" not in script[: script.index("compose_ok()")]
    assert script.index('docker build --network host "${BUILD_ARGS[@]}"') < first_compose_check
    assert script.index('docker run -d -e "LITEEMBED_ADMIN_KEYS') < first_compose_check


def test_the_readme_install_and_docker_run_lines() -> None:
    readme = (ROOT / "README.md").read_text()
    install = readme[readme.index("## Run it") :]
    assert "https://download.pytorch.org/whl/cpu" in install.split("liteembed serve")[0]
    assert "binds 0.0.0.0" in readme
    for doc in (readme, (ROOT / "docs" / "deployment.md").read_text()):
        first_run = doc[doc.index("docker run -d") :].split("\n\n")[0]
        assert "-p 127.0.0.1:8000:8000" in first_run and "-v liteembed-data:/data" in first_run
    assert len(readme.splitlines()) <= 200
