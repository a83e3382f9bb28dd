"""benchmarks/perf/training_abba.py without servers: its summary of alternating runs, its table,
and its refusal of bad arguments before any server starts."""

from __future__ import annotations

import pytest

from benchmarks.perf import training_abba


def _run(side: str, seconds: float, four: float) -> dict[str, object]:
    return {
        "side": side,
        "load_average_at_start": [1.0, 1.0, 1.0],
        "seconds": seconds,
        "four_posted_seconds": four,
    }


def test_the_summary_pairs_adjacent_runs_and_divides_medians() -> None:
    runs = [
        _run("A", 3.0, 10.0),
        _run("B", 2.0, 7.0),
        _run("B", 2.2, 7.2),
        _run("A", 4.0, 12.0),
        _run("A", 3.5, 11.0),
        _run("B", 2.1, 7.1),
    ]
    s = training_abba.summary(runs)
    assert s["medians"]["A"] == {"seconds": 3.5, "four_posted_seconds": 11.0}
    assert s["medians"]["B"] == {"seconds": 2.1, "four_posted_seconds": 7.1}
    assert s["ratio_b_over_a"] == pytest.approx(2.1 / 3.5)
    # (A, B), (B, A), (A, B): always B's time over A's.
    assert s["pair_ratios"] == pytest.approx([2.0 / 3.0, 2.2 / 4.0, 2.1 / 3.5])
    table = training_abba.markdown(
        {
            "model": "m",
            "torch_threads": 1,
            "command": "c",
            "machine": "cpu",
            "a": "{}",
            "b": "{}",
            "runs": runs,
            "summary": s,
        }
    )
    assert "| 6 | B | [1.0, 1.0, 1.0] | 2.10 | 7.10 |" in table
    assert "**x0.60**" in table


def test_one_side_alone_has_no_ratio() -> None:
    s = training_abba.summary([_run("A", 3.0, 10.0), _run("A", 5.0, 10.0)])
    assert s["ratio_b_over_a"] is None and s["pair_ratios"] == []


@pytest.mark.parametrize(
    "argv",
    [
        ["--order", "ABC", "--out", "x.json"],
        ["--a", "{not json", "--out", "x.json"],
    ],
)
def test_bad_arguments_fail_before_any_server(argv: list[str]) -> None:
    with pytest.raises((SystemExit, ValueError)):
        training_abba.main(argv)
