"""Speed of the service next to the bare model, in one run on one machine.

    python -m benchmarks.perf --model liteembed-tiny
    python -m benchmarks.perf --model ViT-B-32          # random weights: speed only

Seven parts, each printed as a markdown table and written to benchmarks/results/perf-<model>.json:

1. classify: the bare model (preprocess + encode, in this process, same torch threads) at batch 1
   and batch 32, against POST /v1/classify on a real `liteembed serve` subprocess (uvicorn) over
   HTTP at concurrency 1 and 16. Measured in interleaved rounds so background load hits both
   sides alike; the ratios are per round, then the median.
2. training: POST -> ready for a 4-shot class with the default steps (server default: the short
   text context) and with the full 77-token context (a second server with
   LITEEMBED_TRAIN_OPTIONS='{"short_context": false}'); the engine's per-step time both ways; and
   the batched speed-up (4 classes in one learn_classes call vs one by one).
3. scale: /classify latency at concurrency 1 with 10 ... 100,000 ready classes (rows inserted
   directly into the server's database, generation bumped), as a ratio to 10 classes measured
   side by side: a second "reference" server holds the first size (10 classes) for the whole
   part, and for each size one client alternates sequential requests between the reference and
   the sized server (A, B, A, B, ...; one request in flight at a time, so only one server works
   at any moment). The ratio is sized p50 / reference p50 from the same window, so drift of the
   machine between sizes cancels; the median of the per-pair ratios is reported next to it. The
   first row (10 vs 10) compares two equal servers: its distance from 1.00 is the noise floor.
   Also the resident memory of both API processes at each size, and the latency while the
   largest matrix changes (appends, then deletes), again alternating with the reference.
4. freshness: what /classify's per-request check of the class generation costs (it makes a
   class any API process answered `ready` for scored by the next request). Two servers on one
   shared database (a fresh SQLite file, or `--database-url`), one with the check (the default)
   and one with LITEEMBED_CLASSIFY_CHECKS_GENERATION=false, side by side: at concurrency 1 one
   client alternates requests between them (ratio of p50s from the same window, and the median
   per-pair ratio); at concurrency 16 the two are loaded in turn, in interleaved rounds (the
   order flips each round), and the throughput ratio is per round, then the median.
5. tenants: /classify within one tenant when the matrix's classes (100,000 by default) are split
   over 1,000 tenants, against the same count all in one tenant: two servers, alternating
   requests as in part 3 (the ratio of p50s from the same window, and the median per-pair ratio).
6. peer: Infinity serving a random-weight CLIP of the same shapes (its own environment,
   `.venv-peer/`, from `bash benchmarks/perf/peer_setup.sh`), against our /v1/embeddings and
   /v1/classify, one lean client for all, in interleaved rounds (`benchmarks/perf/peer.py`).
   Not in the default parts; without the peer's environment it reports the peer unavailable.
7. versus: this checkout's server against another checkout's (`--baseline DIR`, e.g. a git
   worktree of an earlier commit), side by side, to measure one change of the request path
   (`benchmarks/perf/versus.py`). Not in the default parts.

This is a measurement, not a test: nothing asserts on time. The client runs on the same CPU as
the server, so on a small machine the HTTP numbers include the client's own cost.
"""

# Modules, by job: cli (arguments, --render) and run (the parts in order, the output files);
# harness (the server under test, measurement helpers) and rows (ready classes written into a
# server's database); load (the request generators and the bare model's encode); one module per
# part (classify, training, scale, freshness, tenants, peer, versus; peer_model.py runs in the
# peer's environment); report (the markdown tables).
