"""The chaos soak, short: PostgreSQL (own database behind a proxy the soak cuts), its own Redis
restarted, `serve --workers 2` with API processes SIGKILLed, a worker SIGKILLed; every class
accepted ends ready or failed, none twice, and no 5xx outside the disruption windows."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.chaos_soak import EVENTS, SoakOptions, print_table, run_soak

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis]


def test_short_chaos_soak_loses_nothing(
    tmp_path: Path, postgres_server_url: str, cache_dir: Path
) -> None:
    report = run_soak(
        SoakOptions(
            seconds=50,
            outage_seconds=4,
            drain_seconds=40,
            postgres_url=postgres_server_url,
            workdir=tmp_path,
            cache_dir=cache_dir,
        )
    )
    print_table(report)
    assert sorted(d["kind"] for d in report["disruptions"]) == sorted(EVENTS)
    assert report["accepted"] > 0
    assert report["lost"] == [] and report["duplicated"] == [], report
    assert report["5xx_outside_windows"] == 0, report["5xx_outside_detail"]
    assert report["stale_answers"] > 0  # classification went on while the database was away
    assert all(r["not_recovered"] == 0 for r in report["recovery_s"].values()), report
