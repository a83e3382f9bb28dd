"""The demo end to end: a real `liteembed serve` process, HTTP only (tiny random model, so only
the plumbing is checked; about a minute)."""

from __future__ import annotations

import pytest

from cli.demo import run_demo


@pytest.mark.slow
def test_demo_runs_end_to_end_through_the_service() -> None:
    lines: list[str] = []
    code = run_demo(
        model="liteembed-tiny",
        pretrained="random",
        shots=2,
        test_per_class=2,
        base_images=2,
        train_options={"steps": 5, "step_rule": "fixed"},
        use_hints=False,
        out=lines.append,
    )
    text = "\n".join(lines)
    assert code == 0, text
    assert "coin: ready" in text and "badge: ready" in text and "poppy: ready" in text
    assert "held-out accuracy (75-way): before" in text
    assert "base accuracy" in text


def test_demo_rejects_unknown_classes() -> None:
    lines: list[str] = []
    assert run_demo(classes=("unicorn",), out=lines.append) == 1
    assert "unknown classes" in lines[0]
