"""The validation search runs end to end (quick grid, random weights) and writes a settings file
the harness and the engine accept."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks import tune
from benchmarks.rare_classes import load_chosen
from liteembed.config import from_recorded


def test_quick_search_writes_a_settings_file_the_harness_reads(tmp_path: Path) -> None:
    out = tmp_path / "out"
    code = tune.main(
        [
            "--model", "liteembed-tiny", "--pretrained", "random", "--device", "cpu",
            "--max-words", "200", "--cache-dir", str(tmp_path / "cache"), "--quick",
            "--draws", "2", "--draws-other", "1", "--test-per-class", "2", "--threads", "1",
            "--out", str(out),
        ]
    )  # fmt: skip
    assert code == 0
    result = json.loads((out / "validation_search.json").read_text())
    labels = [r["label"] for r in result["records"] if r["stage"] == "1-steps"]
    # every step rule is compared on the same draws, the fold and tie variants included
    assert any("every image in turn" in label for label in labels)
    assert any("margin ties" in label for label in labels)
    step_decision = next(d for d in result["decisions"] if d.startswith("step rule:"))
    assert "best fixed budget" in step_decision
    chosen = load_chosen(out / "chosen_config.json")
    config = from_recorded(chosen["defaults"])
    assert config.to_dict() == chosen["defaults"]
    assert "## Decisions" in (out / "validation_search.md").read_text()
