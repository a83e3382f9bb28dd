"""benchmarks/perf's versus part without the service: the lean client's alternation between two
servers (two tiny HTTP servers that record what reaches them) and the report of a result."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from benchmarks.perf import cli, load, peer, report

ARRIVALS: list[tuple[str, str]] = []


class _Recorder(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the lean client expects

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        ARRIVALS.append((self.server.name, self.path))  # type: ignore[attr-defined]
        body = b'{"ok": true}'
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_args: Any) -> None:
        pass


@contextmanager
def recording(name: str) -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    server.name = name  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_lean_alternating_sends_one_request_to_each_server_in_turn() -> None:
    ARRIVALS.clear()
    with recording("before") as before, recording("after") as after:
        outcome = load.lean_alternating(before, after, b"jpeg bytes", count=5, warmup=2)
    assert [name for name, _ in ARRIVALS] == ["before", "after"] * 7
    assert {path for _, path in ARRIVALS} == {"/v1/classify"}
    assert outcome["pairs"] == 5
    assert outcome["reference"]["count"] == outcome["other"]["count"] == 5
    assert outcome["pair_ratio_median"] > 0


def test_lean_alternating_sends_the_request_it_is_given() -> None:
    ARRIVALS.clear()
    with recording("before") as before, recording("after") as after:
        load.lean_alternating(
            before, after, b"jpeg bytes", count=2, warmup=1, build=peer.our_embeddings_request
        )
    assert {path for _, path in ARRIVALS} == {"/v1/embeddings"}


def test_the_versus_part_needs_a_baseline() -> None:
    with pytest.raises(SystemExit):
        cli.main(["--parts", "versus"])


def test_the_versus_table_gives_both_sides_and_the_difference() -> None:
    def side(p50: float, throughput: float) -> dict[str, float]:
        return {"p50_ms": p50, "p99_ms": p50 * 2, "mean_ms": p50, "throughput_per_s": throughput}

    rounds = [
        {
            "c1_before": side(2.0, 1.0),
            "c1_after": side(1.5, 1.0),
            "c1_p50_diff_ms": -0.5,
            "c1_pair_ratio_median": 0.76,
            "c16_before": side(20.0, 500.0),
            "c16_after": side(15.0, 650.0),
            "throughput_ratio_c16": 1.3,
        }
    ]
    versus = {
        "baseline": "/tmp/base",
        "baseline_commit": "abc1234",
        "pairs_c1": 100,
        "requests_c16": 200,
        "rounds": rounds,
        "c1_p50_diff_ms": -0.5,
        "c1_pair_ratio_median": 0.76,
        "throughput_ratio_c16": 1.3,
    }
    text = "\n".join(report.versus_markdown(versus))
    assert "| c=1 p50 ms | 2.000 | 1.500 |" in text
    assert "| c=16 images/s | 500 | 650 |" in text
    assert "**-500 µs**" in text and "x0.760" in text and "**x1.30**" in text
    assert "abc1234" in text
    assert "raw-body /classify" in text
    versus["request"] = "embeddings"
    assert "/v1/embeddings" in "\n".join(report.versus_markdown(versus))
