"""The model runner (micro-batching) and the class matrix, without HTTP: behaviour, never time."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest
import torch

from service.batcher import MatrixMismatch, ModelRunner, single_threaded_torch
from service.classifier import (
    ClassMatrixCache,
    _assemble,
    build_matrix,
    class_logits,
    top_k_softmax,
)

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


def random_matrix(count: int, dim: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    m = rng.normal(size=(count, dim)).astype(np.float32)
    return np.ascontiguousarray(m / np.linalg.norm(m, axis=1, keepdims=True))


def snapshot_of(matrix: np.ndarray) -> Any:
    count = matrix.shape[0]
    names = [f"class {i}" for i in range(count)]
    return _assemble(
        1, "m", matrix, names, [n.casefold() for n in names], [f"id-{i}" for i in range(count)]
    )


def full_sort_reference(logits: np.ndarray, scale: float, k: int) -> tuple[np.ndarray, Any]:
    scaled = scale * logits.astype(np.float64)
    probabilities = np.exp(scaled - scaled.max())
    probabilities /= probabilities.sum()
    order = np.argsort(-probabilities, kind="stable")[:k]
    return order, probabilities[order]


@pytest.mark.parametrize("count", [3, 64, 65, 20_000])
def test_top_k_equals_the_full_sort(count: int) -> None:
    matrix = random_matrix(count, 64)
    query = random_matrix(1, 64, seed=1)
    logits = class_logits(matrix, query)[0]
    for k in (1, 5, 100):
        indices, scores = top_k_softmax(logits, 100.0, k)
        want_indices, want_scores = full_sort_reference(logits, 100.0, k)
        assert indices.tolist() == want_indices.tolist()
        np.testing.assert_allclose(scores, want_scores, rtol=1e-5, atol=1e-12)


def test_top_k_breaks_ties_by_index() -> None:
    logits = np.array([0.5, 0.9, 0.9, 0.1] + [0.0] * 100, dtype=np.float32)
    indices, _ = top_k_softmax(logits, 10.0, 3)
    assert indices.tolist() == [1, 2, 0]


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


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_device_top_k_equals_the_cpu_top_k(dtype: Any) -> None:
    """The accelerator path's arithmetic, run here on the CPU: same winners, same probabilities."""
    from service.classifier import top_k_softmax_on_device

    matrix = random_matrix(20_000, DIM).astype(dtype)
    matrix[7] = matrix[3]  # an exact tie: the lower index must come first on both paths
    queries = random_matrix(4, DIM, seed=5)
    queries[0] = matrix[3].astype(np.float32)
    weights = torch.from_numpy(matrix)
    best, probabilities = top_k_softmax_on_device(weights, queries, 60.0, 10)
    assert best.shape == probabilities.shape == (4, 10)
    logits = class_logits(matrix, queries)
    for row in range(4):
        want, want_p = top_k_softmax(logits[row], 60.0, 10)
        assert best[row].tolist() == want.tolist()
        np.testing.assert_allclose(probabilities[row], want_p, rtol=1e-4)
    assert best[0][:2].tolist() == [3, 7]
    few, few_p = top_k_softmax_on_device(weights[:3], queries, 60.0, 10)  # k > C
    assert few.shape == (4, 3)
    np.testing.assert_allclose(few_p.sum(axis=1), 1.0, rtol=1e-6)


def test_runner_scores_on_the_device_path_like_the_cpu_path(make_runner: Any) -> None:
    """Forced onto the torch path (what a GPU server takes) with the CPU as its device."""
    matrix = random_matrix(3000, DIM)
    snapshot = snapshot_of(matrix)
    queries = random_matrix(4, DIM, seed=3)

    def encode(batch: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(queries[batch[:, 0, 0, 0].long().numpy()])

    on_device = make_runner(
        encode,
        snapshot=lambda: snapshot,
        logit_scale=lambda: 50.0,
        score_device=torch.device("cpu"),
    )
    on_cpu = make_runner(encode, snapshot=lambda: snapshot, logit_scale=lambda: 50.0)
    for i in range(4):
        a = on_device.encode(pixels(i), top_k=2 + i).result(10)
        b = on_cpu.encode(pixels(i), top_k=2 + i).result(10)
        assert a.indices is not None and b.indices is not None and a.scores is not None
        assert a.indices.tolist() == b.indices.tolist() and len(a.indices) == 2 + i
        np.testing.assert_allclose(a.scores, b.scores, rtol=1e-4)
    assert "cpu" in snapshot._on_device  # uploaded once, kept with the snapshot


def test_runner_reports_a_matrix_of_the_wrong_width(make_runner: Any) -> None:
    snapshot = snapshot_of(random_matrix(10, DIM + 1))
    runner = make_runner(FakeEncoder(), snapshot=lambda: snapshot)
    with pytest.raises(MatrixMismatch):
        runner.encode(pixels(1), top_k=1).result(10)
    assert runner.encode(pixels(1)).result(10).feature[0] == 1  # unscored requests still work


def test_snapshot_lookup_names_ids_and_memory() -> None:
    matrix = random_matrix(10_000, 32)
    snapshot = snapshot_of(matrix)
    assert snapshot.size == 10_000
    assert snapshot.names[1234] == "class 1234" and snapshot.ids[1234] == "id-1234"
    assert snapshot.index_of("class 9999") == 9999
    assert snapshot.index_of("class 10000") is None
    np.testing.assert_array_equal(snapshot.vector(42), matrix[42])
    # Compact: the matrix plus the string bytes and 40 bytes of index per class.
    assert snapshot.nbytes < matrix.nbytes + 100 * snapshot.size


def _insert_ready(url: str, model_id: str, vectors: np.ndarray, first: int = 0) -> None:
    from sqlalchemy import insert

    from service.db import make_engine, session_scope
    from service.db import make_session_factory as factory_of
    from service.models import PersonalizedClass, bump_generation, utcnow

    engine = make_engine(url)
    now = utcnow()
    rows = [
        {
            "id": f"00000000-0000-0000-0000-{first + i:012d}",
            "name": f"Class {first + i}",
            "name_key": f"class {first + i}",
            "model_id": model_id,
            "status": "ready",
            "embedding": v.astype(np.float32).tobytes(),
            "dim": v.shape[0],
            "hints": [],
            "confusers": [],
            "created_at": now,
            "updated_at": now,
        }
        for i, v in enumerate(vectors)
    ]
    with session_scope(factory_of(engine)) as session:
        session.execute(insert(PersonalizedClass), rows)
        bump_generation(session)
    engine.dispose()


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_build_from_the_database_and_refresh_on_a_new_generation(
    database_url: str, dtype: str
) -> None:
    from service.db import make_engine, make_session_factory

    vectors = random_matrix(5000, 16)
    _insert_ready(database_url, "m@1", vectors)
    engine = make_engine(database_url)
    factory = make_session_factory(engine)
    with factory() as session:
        built = build_matrix(session, "m@1", 16, dtype)
        assert build_matrix(session, "other", 16).size == 0
        assert build_matrix(session, "m@1", 32).size == 0  # wrong width: skipped
    assert built.size == 5000 and built.matrix.dtype == np.dtype(dtype)
    assert built.matrix.flags.c_contiguous
    # Rows come in creation order, then id: here the ids follow the vector order.
    np.testing.assert_allclose(built.matrix.astype(np.float32), vectors, atol=1e-3)
    assert built.index_of("class 4321") == 4321 and built.ids[4321].endswith("4321")

    query = random_matrix(1, 16, seed=9)
    indices, _ = top_k_softmax(built.logits(query)[0], 100.0, 10)
    want, _ = full_sort_reference((vectors @ query.T)[:, 0], 100.0, 10)
    if dtype == "float32":
        assert indices.tolist() == want.tolist()
    else:  # half precision may swap near-ties; the set of winners is what matters
        assert len(set(indices.tolist()) & set(want.tolist())) >= 8

    cache = ClassMatrixCache(factory, refresh_seconds=60, dtype=dtype)
    first = cache.snapshot("m@1", 16)
    assert first.size == 5000
    cache.refresh()  # same generation: the snapshot object is kept
    assert cache.snapshot("m@1", 16) is first
    _insert_ready(database_url, "m@1", random_matrix(1, 16, seed=5), first=5000)
    cache.refresh()  # the generation moved: rebuilt, and swapped in whole
    second = cache.snapshot("m@1", 16)
    assert second is not first and second.size == 5001 and first.size == 5000
    assert second.index_of("class 5000") == 5000
    engine.dispose()


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


def _assert_same_content(updated: Any, rebuilt: Any) -> None:
    """An incrementally updated snapshot holds exactly what a full rebuild reads."""
    assert updated.size == rebuilt.size and updated.generation == rebuilt.generation
    np.testing.assert_array_equal(updated.matrix, rebuilt.matrix)
    assert list(updated.ids) == list(rebuilt.ids)
    assert list(updated.names) == list(rebuilt.names)
    assert list(updated.keys) == list(rebuilt.keys)
    for row, key in enumerate(rebuilt.keys):
        assert updated.index_of(key) == row
    np.testing.assert_array_equal(np.sort(updated.key_hashes), updated.key_hashes)


def _remove(factory: Any, *keys: str) -> None:
    """Delete classes the way the API does (logged), one transaction each."""
    from sqlalchemy import select

    from service.crud import remove_class
    from service.db import session_scope
    from service.models import PersonalizedClass

    for key in keys:
        with session_scope(factory) as session:
            row = session.scalars(
                select(PersonalizedClass).where(PersonalizedClass.name_key == key)
            ).one()
            remove_class(session=session, row=row)


def test_a_new_ready_class_is_appended_in_place(database_url: str) -> None:
    """Appending equals a full rebuild in content, writes into spare rows, and never changes
    what an older snapshot sees."""
    from service.classifier import update_matrix
    from service.db import make_engine, make_session_factory

    _insert_ready(database_url, "m@1", random_matrix(300, 16))
    engine = make_engine(database_url)
    factory = make_session_factory(engine)
    cache = ClassMatrixCache(factory, refresh_seconds=60)
    first = cache.snapshot("m@1", 16)
    before = first.matrix.copy()
    _insert_ready(database_url, "m@1", random_matrix(2, 16, seed=3), first=300)
    with factory() as session:
        appended = update_matrix(session, first, 16)
        rebuilt = build_matrix(session, "m@1", 16)
    assert appended is not None
    _assert_same_content(appended, rebuilt)
    assert appended.index_of("class 302") is None
    np.testing.assert_array_equal(first.matrix, before)
    assert first.size == 300 and len(first.ids) == 300

    _insert_ready(database_url, "m@1", random_matrix(3, 16, seed=4), first=302)
    with factory() as session:
        again = update_matrix(session, appended, 16)
        # `first` is no longer the tip of the shared buffer: it must copy, not overwrite the
        # rows `appended` and `again` see.
        branch = update_matrix(session, first, 16)
        rebuilt = build_matrix(session, "m@1", 16)
    assert again is not None and branch is not None
    assert again.store is appended.store  # the spare rows were used: no copy of the matrix
    assert branch.store is not appended.store
    _assert_same_content(again, rebuilt)
    _assert_same_content(branch, rebuilt)
    np.testing.assert_array_equal(appended.matrix, rebuilt.matrix[:302])
    engine.dispose()


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_a_deleted_class_leaves_the_matrix_without_a_rebuild(database_url: str, dtype: str) -> None:
    from service.classifier import update_matrix
    from service.db import make_engine, make_session_factory

    _insert_ready(database_url, "m@1", random_matrix(300, 16))
    engine = make_engine(database_url)
    factory = make_session_factory(engine)
    cache = ClassMatrixCache(factory, refresh_seconds=60, dtype=dtype)
    first = cache.snapshot("m@1", 16)
    _remove(factory, "class 7", "class 0", "class 299")
    _insert_ready(database_url, "m@1", random_matrix(2, 16, seed=3), first=300)
    with factory() as session:
        updated = update_matrix(session, first, 16)
        rebuilt = build_matrix(session, "m@1", 16, dtype)
    assert updated is not None and updated.size == 299
    _assert_same_content(updated, rebuilt)
    for key in ("class 0", "class 7", "class 299"):
        assert updated.index_of(key) is None
    assert first.size == 300 and first.index_of("class 7") == 7  # the old snapshot is intact

    # The cache takes the same path: nothing is re-read in full.
    cache.refresh()
    _assert_same_content(cache.snapshot("m@1", 16), rebuilt)
    engine.dispose()


def test_a_replaced_class_drops_the_old_row_and_appends_the_new(database_url: str) -> None:
    """Same name, new id: the removal log names the old id, so the new row is not dropped."""
    from sqlalchemy import update

    from service.classifier import update_matrix
    from service.db import make_engine, make_session_factory, session_scope
    from service.models import PersonalizedClass

    _insert_ready(database_url, "m@1", random_matrix(10, 16))
    engine = make_engine(database_url)
    factory = make_session_factory(engine)
    with factory() as session:
        first = build_matrix(session, "m@1", 16)
    _remove(factory, "class 4")
    _insert_ready(database_url, "m@1", random_matrix(1, 16, seed=8), first=4)  # same name
    with session_scope(factory) as session:  # ids must differ from the removed row's
        session.execute(
            update(PersonalizedClass)
            .where(PersonalizedClass.id == "00000000-0000-0000-0000-000000000004")
            .values(id="00000000-0000-0000-0000-0000000000aa")
        )
    with factory() as session:
        updated = update_matrix(session, first, 16)
        rebuilt = build_matrix(session, "m@1", 16)
    assert updated is not None
    _assert_same_content(updated, rebuilt)
    row = updated.index_of("class 4")
    assert row == 9 and updated.ids[row].endswith("aa")
    engine.dispose()


def test_changes_it_cannot_account_for_fall_back_to_a_full_rebuild(database_url: str) -> None:
    from sqlalchemy import delete

    from service.classifier import update_matrix
    from service.crud import prune_removals
    from service.db import make_engine, make_session_factory, session_scope
    from service.models import PersonalizedClass, bump_generation, utcnow

    _insert_ready(database_url, "m@1", random_matrix(50, 16))
    engine = make_engine(database_url)
    factory = make_session_factory(engine)
    cache = ClassMatrixCache(factory, refresh_seconds=60)
    first = cache.snapshot("m@1", 16)

    # A row deleted behind the log's back: the counts disagree.
    with session_scope(factory) as session:
        session.execute(delete(PersonalizedClass).where(PersonalizedClass.name_key == "class 7"))
        bump_generation(session)
    with factory() as session:
        assert update_matrix(session, first, 16) is None
    cache.refresh()
    after = cache.snapshot("m@1", 16)
    assert after.size == 49 and after.index_of("class 7") is None

    # The log was pruned past the snapshot: it cannot know what left, so it rebuilds.
    _remove(factory, "class 8")
    with session_scope(factory) as session:
        assert prune_removals(session=session, older_than=utcnow()) == 1
    with factory() as session:
        assert update_matrix(session, after, 16) is None
        assert prune_removals(session=session, older_than=utcnow()) == 0  # nothing left to prune
    cache.refresh()
    assert cache.snapshot("m@1", 16).size == 48
    engine.dispose()


def test_pruning_keeps_recent_removals_and_raises_the_floor(database_url: str) -> None:
    from datetime import timedelta

    from sqlalchemy import func, select

    from service.crud import prune_removals
    from service.db import make_engine, make_session_factory, session_scope
    from service.models import ClassRemoval, read_removals_floor, utcnow

    _insert_ready(database_url, "m@1", random_matrix(5, 16))
    engine = make_engine(database_url)
    factory = make_session_factory(engine)
    _remove(factory, "class 0", "class 1")
    cutoff = utcnow()
    _remove(factory, "class 2")
    with session_scope(factory) as session:
        generations = session.scalars(
            select(ClassRemoval.generation).order_by(ClassRemoval.generation)
        ).all()
        assert len(generations) == 3 and len(set(generations)) == 3
        assert prune_removals(session=session, older_than=cutoff - timedelta(hours=1)) == 0
        assert prune_removals(session=session, older_than=cutoff) == 2
    with factory() as session:
        assert session.scalar(select(func.count()).select_from(ClassRemoval)) == 1
        assert read_removals_floor(session) == generations[1]
    engine.dispose()


def test_packed_strings_take_keeps_the_selected_in_order() -> None:
    from service.classifier import PackedStrings

    values = ["a", "", "héllo", "x" * 300, "日本", "z"]
    keep = np.array([True, True, False, True, True, False])
    taken = PackedStrings(values).take(keep)
    assert list(taken) == ["a", "", "x" * 300, "日本"]
    assert list(PackedStrings(values).take(np.zeros(6, dtype=bool))) == []


def test_random_changes_follow_incrementally_and_equal_a_rebuild(
    database_url: str, monkeypatch: Any
) -> None:
    """Appends, deletes and replacements in random order: after each refresh the cache holds
    exactly what a full rebuild reads, and it never had to rebuild to get there."""
    import random

    from sqlalchemy import update

    import service.classifier as classifier
    from service.db import make_engine, make_session_factory, session_scope
    from service.models import PersonalizedClass

    _insert_ready(database_url, "m@1", random_matrix(200, 16))
    engine = make_engine(database_url)
    factory = make_session_factory(engine)
    cache = ClassMatrixCache(factory, refresh_seconds=60)
    cache.snapshot("m@1", 16)
    rebuilds = 0
    real_build = classifier.build_matrix

    def counting_build(*args: Any, **kwargs: Any) -> Any:
        nonlocal rebuilds
        rebuilds += 1
        return real_build(*args, **kwargs)

    monkeypatch.setattr(classifier, "build_matrix", counting_build)
    rng = random.Random(7)
    alive = set(range(200))
    next_index = 200
    for step in range(30):
        action = rng.choice(["append", "delete", "replace", "mixed"])
        if action in ("append", "mixed"):
            count = rng.randint(1, 5)
            _insert_ready(
                database_url, "m@1", random_matrix(count, 16, seed=100 + step), first=next_index
            )
            alive.update(range(next_index, next_index + count))
            next_index += count
        if action in ("delete", "mixed"):
            gone = rng.sample(sorted(alive), rng.randint(1, 4))
            _remove(factory, *(f"class {i}" for i in gone))
            alive.difference_update(gone)
        if action == "replace":  # the same name comes back as a new class (new id)
            index = rng.choice(sorted(alive))
            _remove(factory, f"class {index}")
            _insert_ready(database_url, "m@1", random_matrix(1, 16, seed=500 + step), first=index)
            with session_scope(factory) as session:
                session.execute(
                    update(PersonalizedClass)
                    .where(PersonalizedClass.name_key == f"class {index}")
                    .values(id=f"replaced-{step}-{index}")
                )
        cache.refresh()
        with factory() as session:
            rebuilt = real_build(session, "m@1", 16)
        current = cache.snapshot("m@1", 16)
        assert current.size == len(alive)
        # Same set of classes with the same vectors (rows may sit in another order: an append
        # goes to the end, a rebuild orders by creation time).
        by_id = {current.ids[r]: current.matrix[r] for r in range(current.size)}
        assert set(by_id) == set(rebuilt.ids)
        for row, class_id in enumerate(rebuilt.ids):
            np.testing.assert_array_equal(by_id[class_id], rebuilt.matrix[row])
            assert current.ids[current.index_of(rebuilt.keys[row])] == class_id
    assert rebuilds == 0
    engine.dispose()
