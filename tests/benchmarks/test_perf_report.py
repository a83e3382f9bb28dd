"""benchmarks/perf's scale part without servers: the side-by-side request order and the
report it renders (no timing is asserted; the numbers below are made up)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from benchmarks.perf import load, report

RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results"


def summary(p50: float, p99: float) -> dict[str, float]:
    return {"p50_ms": p50, "p99_ms": p99, "mean_ms": p50, "throughput_per_s": 1.0, "count": 20}


def result_with(scale: dict[str, Any]) -> dict[str, Any]:
    return {
        "model": "ViT-B-32",
        "device": "cpu",
        "classifier_dtype": "float32",
        "torch_threads": 1,
        "command": "python -m benchmarks.perf --parts scale",
        "date": "2026-01-01T00:00:00+00:00",
        "machine": {
            "cores": 2,
            "cpu": "test CPU",
            "torch": "2.x",
            "torch_threads": 1,
            "load_average_at_start": [0.0, 0.0, 0.0],
        },
        "note": "",
        "scale": scale,
    }


def side_by_side_scale() -> dict[str, Any]:
    def row(classes: int, p50: float, ref_p50: float, pair: float) -> dict[str, Any]:
        return {
            "classes": classes,
            "c1": summary(p50, p50 * 1.2),
            "reference_c1": summary(ref_p50, ref_p50 * 1.1),
            "ratio_to_first": p50 / ref_p50,
            "pair_ratio_median": pair,
            "pairs": 20,
            "rss_mb": 1700.0 + classes / 100,
            "reference_rss_mb": 1690.0,
            "insert_s": 0.1,
            "visible_after_s": 1.0,
        }

    def during(kind: str) -> dict[str, Any]:
        return {
            "classes": 100000,
            "c1": summary(300.0, 450.0),
            "reference_c1": summary(250.0, 300.0),
            "pair_ratio_median": 1.2,
            "reloads": 4,
            "kind": kind,
            "reload_every_s": 5.0,
        }

    return {
        "reference": {"classes": 10, "ratio": "sized p50 / reference p50"},
        "rows": [row(10, 250.0, 248.0, 1.01), row(100000, 275.0, 250.0, 1.09)],
        "during_reloads": during("append"),
        "during_rebuilds": during("delete"),
    }


def test_scale_table_shows_the_same_window_reference_and_ratio() -> None:
    text = report.markdown(result_with(side_by_side_scale()))
    lines = text.splitlines()
    header = next(line for line in lines if line.startswith("| ready classes"))
    columns = [c.strip() for c in header.strip("|").split("|")]
    assert columns[columns.index("ratio") - 2].startswith("reference (10 classes) p50 ms")
    assert "median per-pair ratio" in columns
    by_size = {
        line.split("|")[1].strip(): [c.strip() for c in line.strip("|").split("|")]
        for line in lines
        if line.startswith("| 10 |") or line.startswith("| 100,000 |")
    }
    big = by_size["100,000"]
    assert big[columns.index("p50 ms")] == "275.00"
    assert big[columns.index("ratio")] == "**1.10**"  # 275 / 250, the headline
    assert big[columns.index("median per-pair ratio")] == "1.09"
    assert by_size["10"][columns.index("ratio")] == "**1.01**"  # the A/A noise floor
    assert "ratio = p50 / reference p50 from the same window" in text
    # The reload lines carry the baseline measured alongside them.
    reloads = [line for line in lines if line.startswith("While ")]
    assert len(reloads) == 2
    for line in reloads:
        assert "reference in the same window: p50 250.00 ms, p99 300.00 ms" in line
    assert "deleted (dropped in place via the removal log)" in reloads[1]


def test_results_from_before_the_reference_server_still_render() -> None:
    scale = side_by_side_scale()
    del scale["reference"]
    for row in scale["rows"]:
        for key in ("reference_c1", "pair_ratio_median", "pairs", "reference_rss_mb"):
            del row[key]
    for key in ("during_reloads", "during_rebuilds"):
        del scale[key]["reference_c1"], scale[key]["pair_ratio_median"]
    del scale["during_reloads"]["kind"]  # the oldest format: every bump rebuilt
    scale["during_rebuilds"]["kind"] = "rebuild"  # deletes before the removal log
    text = report.markdown(result_with(scale))
    assert "| ready classes | p50 ms | p99 ms | ratio to 10 | API RSS MB |" in text
    assert "| 100,000 | 275.00 | 330.00 | 1.10 | 2700 |" in text
    assert "reference" not in text
    assert "the matrix was rebuilt (a generation bump)" in text
    assert "a class was deleted (full rebuild)" in text


@pytest.mark.parametrize("path", sorted(RESULTS.glob("perf-*.json")), ids=lambda p: p.name)
def test_committed_results_render(path: Path) -> None:
    assert report.markdown(json.loads(path.read_text())).startswith("### ")


def test_alternating_requests_take_turns_and_pair_up() -> None:
    hosts: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        hosts.append(request.url.host)
        return httpx.Response(200, json={"model": "m", "predictions": []})

    window = load.classify_alternating(
        "http://reference",
        "http://sized",
        b"jpeg",
        count=5,
        warmup=1,
        transport=httpx.MockTransport(handler),
    )
    # One warm-up pair, then five measured pairs, strictly A, B, A, B, ...
    assert hosts == ["reference", "sized"] * 6
    assert window["pairs"] == 5
    assert window["sized"]["count"] == window["reference"]["count"] == 5
    assert window["pair_ratio_median"] > 0
