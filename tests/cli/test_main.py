"""`liteembed demo` reaches run_demo (the full run is in tests/cli/test_demo.py)."""

from __future__ import annotations

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
