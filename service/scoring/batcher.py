"""Dynamic micro-batching for /classify: one thread owns the image encoder.

Requests decode and preprocess their image on a small thread pool, then hand the pixels to the
`ModelRunner`. Its single thread takes the first waiting request, gathers whatever else arrives
within `max_wait_s` (up to `max_batch` images), encodes them in one forward pass, has the
`Scorer` (`service/scoring/scorer.py`) score them against the class matrix in one product, and
resolves each request's future with its own row. It calls only those two steps: what the encoder
is and where scoring runs are decided by whoever builds the runner.

Why one thread: torch's CPU kernels already use every core for one batch. Several request
threads each running the model fight over the same cores (and each spins up its own OpenMP
team), so concurrent requests got slower than one batched call. A single owner also makes the
batch the natural unit of work under load: while one batch runs, the next one queues up.

Waiting costs latency, so the runner only waits while more requests are known to be on their way
(`incoming()`: admitted, still preprocessing); a lone request is encoded at once.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from service.scoring.matrix import ClassMatrix
from service.scoring.scorer import CpuScorer, Scorer


class MatrixMismatch(RuntimeError):
    """The class matrix was built for another embedding width than the loaded model's."""


@dataclass(frozen=True)
class Encoded:
    """One request's share of a batch."""

    feature: np.ndarray  # (D,) float32, L2-normalised
    snapshot: ClassMatrix | None = None  # the matrix it was scored against, if scored
    indices: np.ndarray | None = None  # top-k rows of `snapshot`, best first
    scores: np.ndarray | None = None  # their softmax probabilities over all classes
    similarities: np.ndarray | None = None  # their raw cosines with the image


@dataclass
class _Job:
    future: Future[Any]
    pixels: torch.Tensor | None = None  # (n, 3, H, W)
    top_k: int | None = None  # score against the class matrix, keep the best top_k
    tenant: str | None = None  # ...of this tenant's classes only (None: every class)
    call: Callable[[], Any] | None = None  # any other model work (text features)


_STOP = object()


@dataclass
class RunnerStats:
    """Counters for tests and /metrics-style introspection."""

    batches: int = 0
    images: int = 0
    largest_batch: int = 0


class ModelRunner:
    def __init__(
        self,
        encode: Callable[[torch.Tensor], torch.Tensor],
        *,
        snapshot: Callable[[], ClassMatrix] | None = None,
        logit_scale: Callable[[], float] = lambda: 100.0,
        scorer: Callable[[], Scorer] = CpuScorer,
        max_batch: int = 32,
        max_wait_s: float = 0.005,
    ) -> None:
        """`encode`: pixels (B, 3, H, W) -> L2-normalised features (B, D). `snapshot`: the class
        matrix to score against. `scorer`: makes the scorer, called once, on the first scored
        batch (the model, and with it the device to score on, loads after the app starts)."""
        if max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        self._encode = encode
        self._make_scorer = scorer
        self._scorer: Scorer | None = None
        self._snapshot = snapshot
        self._logit_scale = logit_scale
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._incoming = 0
        self._incoming_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self.stats = RunnerStats()

    # --- callers ---------------------------------------------------------------------------

    @contextmanager
    def incoming(self) -> Iterator[None]:
        """Announce a request that will submit soon (it is still decoding), so the runner
        waits for it instead of encoding a batch that is about to be one short."""
        self.expect()
        with self.arriving():
            yield

    def expect(self) -> None:
        """`incoming` in two halves, for a request announced on one thread that submits from
        another: this half announces it; `arriving` (or `arrived`) ends the announcement."""
        with self._incoming_lock:
            self._incoming += 1

    def arrived(self) -> None:
        with self._incoming_lock:
            self._incoming -= 1

    @contextmanager
    def arriving(self) -> Iterator[None]:
        """Ends an `expect`ed announcement when the block exits, submitted or failed."""
        try:
            yield
        finally:
            self.arrived()

    def encode(
        self, pixels: torch.Tensor, *, top_k: int | None = None, tenant: str | None = None
    ) -> Future[Encoded]:
        """Encode `pixels` (1, 3, H, W); with `top_k`, also score against the class matrix (the
        classes of `tenant` only, when given)."""
        if pixels.ndim != 4 or pixels.shape[0] != 1:
            raise ValueError("submit one image at a time: pixels of shape (1, 3, H, W)")
        return self._submit(_Job(Future(), pixels=pixels, top_k=top_k, tenant=tenant))

    def call(self, fn: Callable[[], Any]) -> Future[Any]:
        """Run `fn` on the model thread (between batches), e.g. encoding label prompts."""
        return self._submit(_Job(Future(), call=fn))

    def start(self) -> None:
        with self._start_lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="liteembed-model-runner", daemon=True
                )
                self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        with self._start_lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(_STOP)
            thread.join(timeout)

    def is_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _submit(self, job: _Job) -> Future[Any]:
        if not self.is_alive():
            self.start()  # started lazily too: tests and tools may use it without a lifespan
        self._queue.put(job)
        return job.future

    # --- the model thread -------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is _STOP:
                return
            if first.call is not None:
                _run_call(first)
                continue
            batch, calls, stop = self._gather(first)
            self._process(batch)
            for job in calls:
                _run_call(job)
            if stop:
                return

    def _gather(self, first: _Job) -> tuple[list[_Job], list[_Job], bool]:
        batch, calls = [first], []
        deadline = time.monotonic() + self.max_wait_s
        while len(batch) < self.max_batch:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                remaining = deadline - time.monotonic()
                with self._incoming_lock:
                    expecting = self._incoming > 0
                if not expecting or remaining <= 0:
                    break
                try:
                    job = self._queue.get(timeout=remaining)
                except queue.Empty:
                    break
            if job is _STOP:
                return batch, calls, True
            if job.call is not None:
                calls.append(job)  # after the batch: the images are already waiting
            else:
                batch.append(job)
        return batch, calls, False

    def _process(self, batch: list[_Job]) -> None:
        # A caller that went away (client disconnect) no longer needs its row.
        live = [job for job in batch if job.future.set_running_or_notify_cancel()]
        if not live:
            return
        try:
            features = self._features(live)
        except Exception as exc:
            if len(live) == 1:
                live[0].future.set_exception(exc)
                return
            # Encode one by one, so only the request that broke the batch gets the error.
            results: list[np.ndarray | None] = []
            for job in live:
                try:
                    results.append(self._features([job])[0])
                except Exception as exc:
                    job.future.set_exception(exc)
                    results.append(None)
            kept = [(job, f) for job, f in zip(live, results, strict=True) if f is not None]
            if not kept:
                return
            live = [job for job, _ in kept]
            features = np.stack([f for _, f in kept])
        self.stats.batches += 1
        self.stats.images += len(live)
        self.stats.largest_batch = max(self.stats.largest_batch, len(live))
        self._score_and_resolve(live, features)

    def _features(self, jobs: list[_Job]) -> np.ndarray:
        pixels = torch.cat([job.pixels for job in jobs if job.pixels is not None])
        encoded = self._encode(pixels)
        return np.ascontiguousarray(encoded.float().cpu().numpy(), dtype=np.float32)

    def _score_and_resolve(self, jobs: list[_Job], features: np.ndarray) -> None:
        scored = [i for i, job in enumerate(jobs) if job.top_k is not None]
        outcome: dict[int, Encoded | BaseException] = {}
        if scored:
            try:
                outcome.update(self._score(jobs, features, scored))
            except Exception as exc:
                outcome.update({i: exc for i in scored})
        for i, job in enumerate(jobs):
            result = outcome.get(i) or Encoded(feature=features[i])
            if isinstance(result, BaseException):
                job.future.set_exception(result)
            else:
                job.future.set_result(result)

    def _score(self, jobs: list[_Job], features: np.ndarray, rows: list[int]) -> dict[int, Encoded]:
        if self._snapshot is None:
            raise RuntimeError("this runner has no class matrix to score against")
        snapshot = self._snapshot()
        if snapshot.matrix.shape[1] != features.shape[1]:
            raise MatrixMismatch(
                f"class matrix width {snapshot.matrix.shape[1]} != feature width "
                f"{features.shape[1]}"
            )
        scale = float(self._logit_scale())
        if self._scorer is None:
            self._scorer = self._make_scorer()
        ks = [jobs[i].top_k or 0 for i in rows]
        tenants = [jobs[i].tenant for i in rows]
        scopes = [None if t is None else snapshot.tenant_rows(t) for t in tenants]
        results = self._scorer.top_k(snapshot, features[rows], scale, ks, scopes)
        return {
            i: Encoded(features[i], snapshot, top.indices, top.probabilities, top.similarities)
            for i, top in zip(rows, results, strict=True)
        }


def _run_call(job: _Job) -> None:
    if not job.future.set_running_or_notify_cancel():
        return
    try:
        assert job.call is not None
        job.future.set_result(job.call())
    except BaseException as exc:
        job.future.set_exception(exc)


def preprocess_pool(threads: int) -> ThreadPoolExecutor:
    """The threads that decode and preprocess images before they reach the model thread."""
    return ThreadPoolExecutor(
        threads, thread_name_prefix="liteembed-preprocess", initializer=single_threaded_torch
    )


def single_threaded_torch() -> None:
    """Make torch ops on the calling thread single-threaded; other threads keep their count.

    For the preprocessing pool: its few small tensor ops (to-tensor, normalise) would otherwise
    each start an OpenMP team as wide as the machine while the model thread's team holds every
    core, and on a small CPU the two teams spin-wait on each other. `torch.set_num_threads` is
    process-wide, so the OpenMP setting of this thread is changed directly, in every OpenMP
    runtime loaded (another package may bring its own copy: scikit-learn vendors libgomp, and
    only torch's decides torch's team size); an OpenMP thread count is per thread.
    """
    torch.get_num_threads()  # torch copies its setting into each new thread on first use: do it now
    threadpool_limits(limits=1, user_api="openmp")
