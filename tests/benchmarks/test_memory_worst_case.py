"""benchmarks/memory_worst_case.py runs end to end (small images, so it is quick): real serve and
worker processes, every row answered, the refused request a 413, the JSON written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import memory_worst_case
from cli.serve_process import free_port

pytestmark = [pytest.mark.slow, pytest.mark.redis]


def test_smoke(tmp_path: Path, redis_server_url: str, cache_dir: Path) -> None:
    argv = ["--side", "1200", "--train-steps", "5", "--port", str(free_port())]
    argv += ["--redis-url", redis_server_url, "--cache-dir", str(cache_dir), "--out", str(tmp_path)]
    assert memory_worst_case.main(argv) == 0
    result = json.loads((tmp_path / "memory-worst-case.json").read_text())
    answers = [row["status"] for row in result["rows"]]
    # 32 images of 1200x1200 fit the default pixel budget; at the real side (5990) the last
    # request is the 413.
    assert answers == [202, "ready", 200, 202]
    assert all(row["peak_growth_mb"] >= 0 for row in result["rows"])
