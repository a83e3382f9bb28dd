"""benchmarks/profile_server.py's reading of py-spy's raw output (no py-spy run here)."""

from __future__ import annotations

from benchmarks import profile_server

LOOP = [
    "run (uvicorn/main.py:10)",
    "run_forever (asyncio/base_events.py:600)",
    "_run_once (asyncio/base_events.py:1900)",
]
SAMPLES = [
    ("101", [*LOOP, "Handle._run (asyncio/events.py:84)", "app (fastapi/routing.py:300)",
             "validate (pydantic/main.py:20)"], 30),
    ("101", [*LOOP, "data_received (uvicorn/protocols/http/h11_impl.py:200)",
             "next_event (h11/_connection.py:400)"], 20),
    ("101", LOOP, 50),
    ("202", ["_bootstrap (threading.py:995)", "ModelRunner._run (service/scoring/batcher.py:147)",
             "forward (torch/nn/modules/linear.py:134)"], 90),
    ("303", ["_worker (concurrent/futures/thread.py:81)",
             "_pixels (service/api/routes/classify.py:64)", "resize (PIL/Image.py:2440)"], 40),
]  # fmt: skip
# py-spy `record --format raw --threads`: the thread, root..leaf frames, then the sample count.
RAW = (
    "\n".join(
        ";".join([f"thread ({thread})", *frames]) + f" {count}" for thread, frames, count in SAMPLES
    )
    + "\nnot a sample line\n"
)


def test_threads_roles_and_shares() -> None:
    threads = profile_server.parse_raw(RAW)
    assert set(threads) == {"101", "202", "303"}
    assert threads["202"][0] == (
        ["_bootstrap (threading.py:995)", "ModelRunner._run (service/scoring/batcher.py:147)",
         "forward (torch/nn/modules/linear.py:134)"],
        90,
    )  # fmt: skip
    summary = profile_server.summarize_profile(threads, total_samples=200)
    by_role = {row["role"]: row for row in summary["threads"]}
    assert set(by_role) == {"event loop", "model thread", "preprocess pool"}
    assert by_role["event loop"]["busy_share"] == 0.5  # 100 of 200 samples
    assert by_role["model thread"]["busy_share"] == 0.45
    assert by_role["preprocess pool"]["top_self"] == [("resize (PIL/Image.py:2440)", 40)]
    # Only the event loop is split by library, each sample going to its innermost library.
    split = {s["library"]: s["share"] for s in summary["event_loop_split"]}
    assert split == {
        "asyncio (loop, selector, socket reads and writes)": 0.5,
        "pydantic": 0.3,
        "HTTP parsing (h11 / httptools)": 0.2,
    }


def test_markdown_lists_busy_threads_and_the_split() -> None:
    threads = profile_server.parse_raw(RAW)
    result = {
        "model": "liteembed-tiny",
        "machine": {"cores": 2, "cpu": "test cpu"},
        "torch_threads": 1,
        "command": "python -m benchmarks.profile_server",
        "date": "2026-01-01T00:00:00+00:00",
        "concurrency": 16,
        "seconds": 1.0,
        "rate": 200,
        "load": {"throughput_per_s": 100.0, "p50_ms": 10.0},
        "profile": profile_server.summarize_profile(threads, total_samples=200),
        "note": "",
    }
    text = profile_server.markdown(result)
    assert "| event loop | 50 % |" in text
    assert "| model thread | 45 % |" in text
    assert "| pydantic | 30 % |" in text
