"""The model runner (micro-batching), without HTTP, and through the app: behaviour, never time."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest
import torch

from service.scoring.batcher import MatrixMismatch, ModelRunner, single_threaded_torch
from service.scoring.scorer import DeviceScorer
from tests.helpers.class_vectors import full_sort_reference, random_matrix, snapshot_of

DIM = 8


def pixels(value: float) -> torch.Tensor:
    """One fake image whose 'feature' is its value repeated (see FakeEncoder)."""
    return torch.full((1, 3, 2, 2), float(value))


class FakeEncoder:
    """Records batch sizes; the first call can be held, so later requests pile up behind it."""

    def __init__(self, *, hold_first: bool = False) -> None:
        self.batches: list[int] = []
        self.threads: set[str] = set()
        self.entered = threading.Event()
        self.gate = threading.Event()
        if not hold_first:
            self.gate.set()

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        self.batches.append(int(batch.shape[0]))
        self.threads.add(threading.current_thread().name)
        self.entered.set()
        assert self.gate.wait(10)
        if (batch < 0).any():
            raise ValueError("negative pixels")  # the poisoned request
        return batch.reshape(batch.shape[0], -1)[:, :1].repeat(1, DIM)


@pytest.fixture
def make_runner() -> Iterator[Any]:
    runners: list[ModelRunner] = []

    def make(encoder: Any, **kwargs: Any) -> ModelRunner:
        runner = ModelRunner(encoder, **kwargs)
        runner.start()
        runners.append(runner)
        return runner

    yield make
    for runner in runners:
        runner.stop()


def test_concurrent_requests_are_encoded_in_one_batch_each_gets_its_own_row(
    make_runner: Any,
) -> None:
    encoder = FakeEncoder(hold_first=True)
    runner = make_runner(encoder, max_batch=32, max_wait_s=0.0)
    first = runner.encode(pixels(1))
    assert encoder.entered.wait(10)  # the runner is busy with the first request...
    later = [runner.encode(pixels(v)) for v in range(2, 7)]  # ...so these queue up
    encoder.gate.set()
    assert first.result(10).feature[0] == 1
    for value, future in zip(range(2, 7), later, strict=True):
        assert np.all(future.result(10).feature == value)
    assert encoder.batches == [1, 5]
    assert runner.stats.largest_batch == 5
    assert encoder.threads == {"liteembed-model-runner"}


def test_batches_never_exceed_max_batch(make_runner: Any) -> None:
    encoder = FakeEncoder(hold_first=True)
    runner = make_runner(encoder, max_batch=4, max_wait_s=0.0)
    futures = [runner.encode(pixels(0))]
    assert encoder.entered.wait(10)
    futures += [runner.encode(pixels(v)) for v in range(1, 10)]
    encoder.gate.set()
    assert [f.result(10).feature[0] for f in futures] == list(range(10))
    assert encoder.batches == [1, 4, 4, 1]


def test_an_error_reaches_only_the_request_that_caused_it(make_runner: Any) -> None:
    encoder = FakeEncoder(hold_first=True)
    runner = make_runner(encoder, max_batch=32, max_wait_s=0.0)
    blocker = runner.encode(pixels(9))
    assert encoder.entered.wait(10)
    good1, bad, good2 = (
        runner.encode(pixels(1)),
        runner.encode(pixels(-1)),
        runner.encode(pixels(2)),
    )
    encoder.gate.set()
    assert blocker.result(10).feature[0] == 9
    assert good1.result(10).feature[0] == 1 and good2.result(10).feature[0] == 2
    with pytest.raises(ValueError, match="negative pixels"):
        bad.result(10)
    # The runner survives and keeps serving.
    assert runner.encode(pixels(3)).result(10).feature[0] == 3


def test_waits_only_while_more_requests_are_announced(make_runner: Any) -> None:
    encoder = FakeEncoder()
    # A long wait: a lone request must not pay it (result within 10 s proves no 60 s wait).
    runner = make_runner(encoder, max_batch=32, max_wait_s=60.0)
    assert runner.encode(pixels(1)).result(10).feature[0] == 1
    assert encoder.batches == [1]

    # Two requests announced; the first submits while the second is still "decoding": the
    # runner waits for it and encodes both together.
    runner.max_wait_s = 10.0
    with runner.incoming():
        with runner.incoming():
            a = runner.encode(pixels(2))
        assert not a.done()  # still waiting for the announced one
        b = runner.encode(pixels(3))
    assert a.result(10).feature[0] == 2 and b.result(10).feature[0] == 3
    assert encoder.batches == [1, 2]


def test_calls_run_on_the_model_thread(make_runner: Any) -> None:
    runner = make_runner(FakeEncoder())
    assert runner.call(lambda: threading.current_thread().name).result(10) == (
        "liteembed-model-runner"
    )
    with pytest.raises(ZeroDivisionError):
        runner.call(lambda: 1 / 0).result(10)


def test_runner_scores_a_batch_against_the_class_matrix(make_runner: Any) -> None:
    matrix = random_matrix(5000, DIM)
    snapshot = snapshot_of(matrix)
    queries = random_matrix(6, DIM, seed=3)
    encoder = FakeEncoder(hold_first=True)

    def encode(batch: torch.Tensor) -> torch.Tensor:
        encoder(batch)
        return torch.from_numpy(queries[batch[:, 0, 0, 0].long().numpy()])

    runner = make_runner(encode, snapshot=lambda: snapshot, logit_scale=lambda: 50.0)
    first = runner.encode(pixels(0), top_k=3)
    assert encoder.entered.wait(10)
    rest = [runner.encode(pixels(i), top_k=3 + i) for i in range(1, 6)]
    encoder.gate.set()
    for i, future in enumerate([first, *rest]):
        result = future.result(10)
        want, want_scores = full_sort_reference(matrix @ queries[i], 50.0, 3 + i)
        assert result.snapshot is snapshot
        assert result.indices is not None and result.scores is not None
        assert result.indices.tolist() == want.tolist()
        np.testing.assert_allclose(result.scores, want_scores, rtol=1e-4)
    assert encoder.batches == [1, 5]


def test_runner_scores_on_the_device_path_like_the_cpu_path(make_runner: Any) -> None:
    """Forced onto the torch path (what a GPU server takes) with the CPU as its device."""
    matrix = random_matrix(3000, DIM)
    snapshot = snapshot_of(matrix)
    queries = random_matrix(4, DIM, seed=3)

    def encode(batch: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(queries[batch[:, 0, 0, 0].long().numpy()])

    made: list[DeviceScorer] = []

    def device_scorer() -> DeviceScorer:
        made.append(DeviceScorer(torch.device("cpu")))
        return made[-1]

    on_device = make_runner(
        encode,
        snapshot=lambda: snapshot,
        logit_scale=lambda: 50.0,
        scorer=device_scorer,
    )
    on_cpu = make_runner(encode, snapshot=lambda: snapshot, logit_scale=lambda: 50.0)
    uploaded = None
    for i in range(4):
        a = on_device.encode(pixels(i), top_k=2 + i).result(10)
        b = on_cpu.encode(pixels(i), top_k=2 + i).result(10)
        assert a.indices is not None and b.indices is not None and a.scores is not None
        assert a.indices.tolist() == b.indices.tolist() and len(a.indices) == 2 + i
        np.testing.assert_allclose(a.scores, b.scores, rtol=1e-4)
        uploaded = uploaded if uploaded is not None else made[0].weights(snapshot)
    assert len(made) == 1  # the scorer is chosen once
    assert made[0].weights(snapshot) is uploaded  # uploaded once, kept with the snapshot


def test_runner_reports_a_matrix_of_the_wrong_width(make_runner: Any) -> None:
    snapshot = snapshot_of(random_matrix(10, DIM + 1))
    runner = make_runner(FakeEncoder(), snapshot=lambda: snapshot)
    with pytest.raises(MatrixMismatch):
        runner.encode(pixels(1), top_k=1).result(10)
    assert runner.encode(pixels(1)).result(10).feature[0] == 1  # unscored requests still work


def test_concurrent_requests_share_the_runner(client: Any, make_image: Any) -> None:
    """Through the app: concurrent /classify answers equal the one-at-a-time answers."""
    colours = [(20, 140, 40), (240, 220, 30), (220, 30, 220), (20, 30, 160)]
    images = [make_image(c, seed=i) for i, c in enumerate(colours * 3)]

    def ask(image: bytes) -> Any:
        response = client.post(
            "/v1/classify",
            files={"image": ("q.png", image, "image/png")},
            data={"labels": ["cat", "dog", "car", "tree"], "top_k": 4},
        )
        assert response.status_code == 200, response.text
        return response.json()["predictions"]

    alone = [ask(image) for image in images]
    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(ask, images))
    for a, b in zip(alone, together, strict=True):
        assert [p["label"] for p in a] == [p["label"] for p in b]
        np.testing.assert_allclose([p["score"] for p in a], [p["score"] for p in b], rtol=1e-4)
    metrics = client.get("/metrics").text
    assert "liteembed_classify_batched_images 24.0" in metrics
    assert "liteembed_class_matrix_classes 0.0" in metrics


def test_preprocessing_threads_run_torch_single_threaded() -> None:
    main_threads = torch.get_num_threads()
    with ThreadPoolExecutor(1, initializer=single_threaded_torch) as pool:
        inside = pool.submit(torch.get_num_threads).result()
    assert inside == 1
    assert torch.get_num_threads() == main_threads  # the model thread's setting is untouched
    other = ThreadPoolExecutor(1)
    assert other.submit(torch.get_num_threads).result() == main_threads
    other.shutdown()
