"""`liteembed demo` reaches run_demo (the full run is in tests/cli/test_demo.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cli.main import main


def test_demo_command_rejects_a_class_the_world_does_not_have(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # An unknown class is refused before any server starts, so this checks the wiring cheaply.
    assert main(["demo", "--classes", "no-such-class"]) == 1
    out = capsys.readouterr().out
    assert "unknown classes: ['no-such-class']" in out
    assert "coin" in out  # the message lists the held-out classes to choose from


def test_without_keys_in_a_container_the_refusal_does_not_suggest_leaving_out_host(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Inside a container 127.0.0.1 is unreachable from the published port: the way out there
    is a key (or ALLOW_OPEN), never "leave out --host"."""
    from cli import main as cli_main
    from service.core.config import Settings

    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    marker = tmp_path / ".dockerenv"
    monkeypatch.setattr(cli_main, "CONTAINER_MARKERS", (marker,))
    with pytest.raises(SystemExit) as outside:
        cli_main.serve_host(settings, "0.0.0.0")
    assert "leave out --host" in str(outside.value)
    marker.touch()
    with pytest.raises(SystemExit) as inside:
        cli_main.serve_host(settings, "0.0.0.0")
    message = str(inside.value)
    assert "leave out --host" not in message
    assert "docker run -e LITEEMBED_ADMIN_KEYS=<key>" in message
    assert "LITEEMBED_ALLOW_OPEN=true" in message
