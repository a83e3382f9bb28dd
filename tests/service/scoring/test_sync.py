"""The class matrix kept in step with the database: full builds, incremental updates, and the
fall-back to a rebuild when an update cannot account for every row."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from service.models import DEFAULT_TENANT
from service.scoring.matrix import scoped_key
from service.scoring.scorer import class_logits, top_k_softmax
from service.scoring.sync import ClassMatrixCache, build_matrix, update_matrix
from tests.helpers.class_vectors import (
    full_sort_reference,
    insert_ready,
    random_matrix,
    remove_classes,
)


def in_default(name_key: str) -> str:
    """The matrix key of a class of the default tenant (the rows these tests insert)."""
    return scoped_key(DEFAULT_TENANT, name_key)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_build_from_the_database_and_refresh_on_a_new_generation(
    database_url: str, dtype: str
) -> None:
    from service.db import make_engine, make_session_factory

    vectors = random_matrix(5000, 16)
    insert_ready(database_url, "m@1", vectors)
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
    assert built.index_of(in_default("class 4321")) == 4321 and built.ids[4321].endswith("4321")

    query = random_matrix(1, 16, seed=9)
    indices, _ = top_k_softmax(class_logits(built.matrix, query)[0], 100.0, 10)
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
    insert_ready(database_url, "m@1", random_matrix(1, 16, seed=5), first=5000)
    cache.refresh()  # the generation moved: rebuilt, and swapped in whole
    second = cache.snapshot("m@1", 16)
    assert second is not first and second.size == 5001 and first.size == 5000
    assert second.index_of(in_default("class 5000")) == 5000
    engine.dispose()


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


def test_a_new_ready_class_is_appended_in_place(database_url: str) -> None:
    """Appending equals a full rebuild in content, writes into spare rows, and never changes
    what an older snapshot sees."""
    from service.db import make_engine, make_session_factory

    insert_ready(database_url, "m@1", random_matrix(300, 16))
    engine = make_engine(database_url)
    factory = make_session_factory(engine)
    cache = ClassMatrixCache(factory, refresh_seconds=60)
    first = cache.snapshot("m@1", 16)
    before = first.matrix.copy()
    insert_ready(database_url, "m@1", random_matrix(2, 16, seed=3), first=300)
    with factory() as session:
        appended = update_matrix(session, first, 16)
        rebuilt = build_matrix(session, "m@1", 16)
    assert appended is not None
    _assert_same_content(appended, rebuilt)
    assert appended.index_of(in_default("class 302")) is None
    np.testing.assert_array_equal(first.matrix, before)
    assert first.size == 300 and len(first.ids) == 300

    insert_ready(database_url, "m@1", random_matrix(3, 16, seed=4), first=302)
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
    from service.db import make_engine, make_session_factory

    insert_ready(database_url, "m@1", random_matrix(300, 16))
    engine = make_engine(database_url)
    factory = make_session_factory(engine)
    cache = ClassMatrixCache(factory, refresh_seconds=60, dtype=dtype)
    first = cache.snapshot("m@1", 16)
    remove_classes(factory, "class 7", "class 0", "class 299")
    insert_ready(database_url, "m@1", random_matrix(2, 16, seed=3), first=300)
    with factory() as session:
        updated = update_matrix(session, first, 16)
        rebuilt = build_matrix(session, "m@1", 16, dtype)
    assert updated is not None and updated.size == 299
    _assert_same_content(updated, rebuilt)
    for key in ("class 0", "class 7", "class 299"):
        assert updated.index_of(in_default(key)) is None
    # The old snapshot is intact.
    assert first.size == 300 and first.index_of(in_default("class 7")) == 7

    # The cache takes the same path: nothing is re-read in full.
    cache.refresh()
    _assert_same_content(cache.snapshot("m@1", 16), rebuilt)
    engine.dispose()


def test_a_replaced_class_drops_the_old_row_and_appends_the_new(database_url: str) -> None:
    """Same name, new id: the removal log names the old id, so the new row is not dropped."""
    from sqlalchemy import update

    from service.db import make_engine, make_session_factory, session_scope
    from service.models import PersonalizedClass

    insert_ready(database_url, "m@1", random_matrix(10, 16))
    engine = make_engine(database_url)
    factory = make_session_factory(engine)
    with factory() as session:
        first = build_matrix(session, "m@1", 16)
    remove_classes(factory, "class 4")
    insert_ready(database_url, "m@1", random_matrix(1, 16, seed=8), first=4)  # same name
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
    row = updated.index_of(in_default("class 4"))
    assert row == 9 and updated.ids[row].endswith("aa")
    engine.dispose()


def test_a_relearned_ready_class_replaces_its_row_with_its_threshold(database_url: str) -> None:
    """A ready row rewritten in place (re-learned: same id, new vector and threshold) is one row
    of the updated snapshot, not two, and carries its new threshold."""
    from sqlalchemy import update

    from service.db import make_engine, make_session_factory, session_scope
    from service.models import PersonalizedClass, bump_generation

    insert_ready(database_url, "m@1", random_matrix(10, 16))
    engine = make_engine(database_url)
    factory = make_session_factory(engine)
    with factory() as session:
        first = build_matrix(session, "m@1", 16)
    assert np.isnan(first.thresholds_of(np.arange(10))).all()
    new_vector = random_matrix(1, 16, seed=21)[0]
    class_id = "00000000-0000-0000-0000-000000000003"
    with session_scope(factory) as session:
        session.execute(
            update(PersonalizedClass)
            .where(PersonalizedClass.id == class_id)
            .values(embedding=new_vector.tobytes(), threshold=0.25)
        )
        bump_generation(session)
    with factory() as session:
        updated = update_matrix(session, first, 16)
        rebuilt = build_matrix(session, "m@1", 16)
    assert updated is not None and updated.size == 10
    row = updated.index_of(in_default("class 3"), class_id)
    assert row is not None and list(updated.ids).count(class_id) == 1
    np.testing.assert_array_equal(updated.vector(row), new_vector)
    assert updated.thresholds_of(np.array([row])).tolist() == [0.25]
    rebuilt_row = rebuilt.index_of(in_default("class 3"))
    assert rebuilt.thresholds_of(np.array([rebuilt_row])).tolist() == [0.25]
    assert np.isnan(updated.thresholds_of(np.array([updated.index_of(in_default("class 2"))])))[0]
    # The snapshot it came from is untouched (requests in flight may hold it).
    assert first.size == 10 and not np.array_equal(first.vector(3), new_vector)
    engine.dispose()


def test_changes_it_cannot_account_for_fall_back_to_a_full_rebuild(database_url: str) -> None:
    from sqlalchemy import delete

    from service.crud import prune_removals
    from service.db import make_engine, make_session_factory, session_scope
    from service.models import PersonalizedClass, bump_generation, utcnow

    insert_ready(database_url, "m@1", random_matrix(50, 16))
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
    assert after.size == 49 and after.index_of(in_default("class 7")) is None

    # The log was pruned past the snapshot: it cannot know what left, so it rebuilds.
    remove_classes(factory, "class 8")
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

    insert_ready(database_url, "m@1", random_matrix(5, 16))
    engine = make_engine(database_url)
    factory = make_session_factory(engine)
    remove_classes(factory, "class 0", "class 1")
    cutoff = utcnow()
    remove_classes(factory, "class 2")
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


def test_random_changes_follow_incrementally_and_equal_a_rebuild(
    database_url: str, monkeypatch: Any
) -> None:
    """Appends, deletes and replacements in random order: after each refresh the cache holds
    exactly what a full rebuild reads, and it never had to rebuild to get there."""
    import random

    from sqlalchemy import update

    import service.scoring.sync as sync
    from service.db import make_engine, make_session_factory, session_scope
    from service.models import PersonalizedClass

    insert_ready(database_url, "m@1", random_matrix(200, 16))
    engine = make_engine(database_url)
    factory = make_session_factory(engine)
    cache = ClassMatrixCache(factory, refresh_seconds=60)
    cache.snapshot("m@1", 16)
    rebuilds = 0
    real_build = sync.build_matrix

    def counting_build(*args: Any, **kwargs: Any) -> Any:
        nonlocal rebuilds
        rebuilds += 1
        return real_build(*args, **kwargs)

    monkeypatch.setattr(sync, "build_matrix", counting_build)
    rng = random.Random(7)
    alive = set(range(200))
    next_index = 200
    for step in range(30):
        action = rng.choice(["append", "delete", "replace", "mixed"])
        if action in ("append", "mixed"):
            count = rng.randint(1, 5)
            insert_ready(
                database_url, "m@1", random_matrix(count, 16, seed=100 + step), first=next_index
            )
            alive.update(range(next_index, next_index + count))
            next_index += count
        if action in ("delete", "mixed"):
            gone = rng.sample(sorted(alive), rng.randint(1, 4))
            remove_classes(factory, *(f"class {i}" for i in gone))
            alive.difference_update(gone)
        if action == "replace":  # the same name comes back as a new class (new id)
            index = rng.choice(sorted(alive))
            remove_classes(factory, f"class {index}")
            insert_ready(database_url, "m@1", random_matrix(1, 16, seed=500 + step), first=index)
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
