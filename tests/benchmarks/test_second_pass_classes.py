"""benchmarks/second_pass_classes.py without a model: a class the second pass learned again gets
one row with both words' figures; a class it did not learn again gets none."""

from __future__ import annotations

from benchmarks.methods import Outcome
from benchmarks.second_pass_classes import class_rows, markdown


def _outcome(hm: float, own: dict[str, float], taken: dict[str, dict[str, float]]) -> Outcome:
    return Outcome(
        heldout=0.9,
        base_after=0.9,
        base_before=1.0,
        hm=hm,
        map=None,
        seconds_per_class=0.1,
        per_class=own,
        taken_by=taken,
    )


def test_a_class_learned_again_gets_both_words_side_by_side() -> None:
    without = _outcome(0.97, {"comet": 0.92, "pie": 1.0}, {"comet": {"sun": 0.4, "rosette": 0.58}})
    every = _outcome(0.95, {"comet": 0.58, "pie": 1.0}, {"comet": {"rosette": 0.02}})
    record = {"kept_before": 0.75, "kept_after": 0.97, "cosine": 0.67, "replaced": True}
    every.extra["second_pass"] = {"comet": record}
    rows = class_rows(2, without, every)
    assert len(rows) == 1  # "pie" was not learned again
    row = rows[0]
    assert (row["draw"], row["class"], row["cosine"], row["replaced"]) == (2, "comet", 0.67, True)
    assert (row["own_without"], row["own_with"]) == (0.92, 0.58)
    assert abs(row["takes_without"] - 0.98) < 1e-9 and row["takes_with"] == 0.02
    table = markdown(
        {"model": "m", "split": "val_heldout", "shots": 4, "draws": 1, "rows": rows, "command": "c"}
    )
    assert "| 2 | comet | 0.75 → 0.97 | 0.670 | yes | 92 / 58 % | 0.98 / 0.02 | -2.00 |" in table


def test_a_draw_without_a_second_pass_has_no_rows() -> None:
    outcome = _outcome(0.97, {"pie": 1.0}, {})
    assert class_rows(0, outcome, outcome) == []
