"""The `train_class` actor called directly: idempotency, bounded attempts, engine errors,
cancellation on delete, the reconciler."""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from typing import Any

import pytest

from service.db import make_engine, make_session_factory
from service.models import ClassImage, PersonalizedClass, Status, utcnow
from service.queue import make_producer
from tests.helpers.images import COLOURS, image_bytes
from workers import Trainer, reconcile_once


@pytest.fixture
def setup(sqlite_url: str, make_settings: Any, shared_runtime: Any) -> Any:
    settings = make_settings(sqlite_url, max_attempts=2)
    factory = make_session_factory(make_engine(settings.database_url))
    trainer = Trainer(settings, factory, shared_runtime)
    return settings, factory, trainer


def add_class(factory: Any, name: str = "zorb", **values: Any) -> str:
    with factory() as session:
        row = PersonalizedClass(
            name=name,
            name_key=name.casefold(),
            model_id="liteembed-tiny@random-0",
            **({"hints": [], "confusers": []} | values),
        )
        row.images = [
            ClassImage(position=i, data=image_bytes(COLOURS["green"], seed=i)) for i in range(3)
        ]
        session.add(row)
        session.commit()
        return row.id


def get(factory: Any, class_id: str) -> PersonalizedClass | None:
    with factory() as session:
        return session.get(PersonalizedClass, class_id)


def test_trains_once_and_is_idempotent(setup: Any) -> None:
    _, factory, trainer = setup
    class_id = add_class(factory)
    trainer.train_class(class_id)
    row = get(factory, class_id)
    assert row is not None and row.status == Status.ready and row.attempts == 1
    embedding = row.embedding
    trainer.train_class(class_id)  # a duplicate message: nothing happens
    again = get(factory, class_id)
    assert again is not None and again.attempts == 1 and again.embedding == embedding


def test_engine_error_fails_with_a_readable_message(setup: Any) -> None:
    _, factory, trainer = setup
    class_id = add_class(factory, hints=["qqzzxxq-not-a-word"])
    trainer.train_class(class_id)
    row = get(factory, class_id)
    assert row is not None and row.status == Status.failed
    assert row.error and "qqzzxxq" in row.error


def test_gives_up_after_max_attempts(setup: Any) -> None:
    _, factory, trainer = setup
    # Two runs that died (stale heartbeat, as after a SIGKILL): the next delivery gives up.
    stale = utcnow() - timedelta(hours=1)
    class_id = add_class(factory, status=Status.training.value, attempts=2, heartbeat_at=stale)
    trainer.train_class(class_id)
    row = get(factory, class_id)
    assert row is not None and row.status == Status.failed
    assert row.error and "gave up after 2 attempts" in row.error


def test_live_run_is_not_duplicated(setup: Any) -> None:
    _, factory, trainer = setup
    class_id = add_class(factory, status=Status.training.value, attempts=1, heartbeat_at=utcnow())
    trainer.train_class(class_id)
    row = get(factory, class_id)
    assert row is not None and row.status == Status.training and row.attempts == 1


def test_delete_during_training_abandons_the_job(setup: Any) -> None:
    settings, factory, trainer = setup
    trainer.settings = settings.model_copy(
        update={"train_steps": 100_000, "train_options": {"early_stopping": False}}
    )
    class_id = add_class(factory)
    run = threading.Thread(target=trainer.train_class, args=(class_id,))
    run.start()
    deadline = time.monotonic() + 60
    while (row := get(factory, class_id)) is not None and row.progress <= 0:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    with factory() as session:
        session.delete(session.get(PersonalizedClass, class_id))
        session.commit()
    run.join(timeout=30)
    assert not run.is_alive()
    assert get(factory, class_id) is None


def test_reconciler_resends_stuck_rows_once(setup: Any) -> None:
    settings, factory, _ = setup
    producer = make_producer(settings)
    old = utcnow() - timedelta(hours=1)
    stuck_queued = add_class(factory, "a", enqueued_at=old)
    stale_training = add_class(
        factory, "b", status=Status.training.value, heartbeat_at=old, enqueued_at=old
    )
    add_class(factory, "c", enqueued_at=utcnow())  # recently sent: left alone
    add_class(factory, "d", status=Status.training.value, heartbeat_at=utcnow(), enqueued_at=old)
    sent = reconcile_once(factory, producer, settings)
    assert sorted(sent) == sorted([stuck_queued, stale_training])
    assert producer.depth() == 2
    assert reconcile_once(factory, producer, settings) == []  # not again until it is stale again


def test_queued_classes_are_trained_together_in_one_batch(setup: Any, monkeypatch: Any) -> None:
    _, factory, trainer = setup
    import liteembed

    calls: list[int] = []
    real = liteembed.learn_classes

    def counting(backend: Any, vocabulary: Any, requests: Any, **kwargs: Any) -> Any:
        calls.append(len(requests))
        return real(backend, vocabulary, requests, **kwargs)

    monkeypatch.setattr(liteembed, "learn_classes", counting)
    first = add_class(factory, "zorb")
    second = add_class(factory, "plax")
    trainer.train_class(first)
    assert calls == [2]  # one optimisation for both
    dim = int(trainer.runtime.get().backend.embed_dim)
    for class_id in (first, second):
        row = get(factory, class_id)
        assert row is not None and row.status == Status.ready and row.attempts == 1
        assert row.lease is None and row.embedding is not None
        assert len(row.embedding) == 4 * dim  # exactly one embedding, this model's width
        assert row.diagnostics is not None and row.diagnostics["batch_size"] == 2
    # The second class's own message arrives later: nothing to do, nothing rewritten.
    embedding = get(factory, second).embedding  # type: ignore[union-attr]
    trainer.train_class(second)
    again = get(factory, second)
    assert again is not None and again.attempts == 1 and again.embedding == embedding
    assert calls == [2]


def test_batch_leaves_live_and_exhausted_rows_alone(setup: Any) -> None:
    settings, factory, trainer = setup
    first = add_class(factory, "zorb")
    live = add_class(
        factory, "plax", status=Status.training.value, attempts=1, heartbeat_at=utcnow()
    )
    exhausted = add_class(factory, "quib", attempts=settings.max_attempts)
    trainer.train_class(first)
    assert get(factory, first).status == Status.ready  # type: ignore[union-attr]
    row = get(factory, live)
    assert row is not None and row.status == Status.training and row.attempts == 1
    row = get(factory, exhausted)
    assert row is not None and row.status == Status.queued


def test_one_bad_class_does_not_sink_the_batch(setup: Any) -> None:
    _, factory, trainer = setup
    good = add_class(factory, "zorb")
    bad = add_class(factory, "plax", hints=["qqzzxxq-not-a-word"])
    trainer.train_class(good)
    assert get(factory, good).status == Status.ready  # type: ignore[union-attr]
    row = get(factory, bad)
    assert row is not None and row.status == Status.failed
    assert row.error and "qqzzxxq" in row.error


def test_batching_can_be_switched_off(setup: Any) -> None:
    settings, factory, trainer = setup
    trainer.settings = settings.model_copy(update={"train_batch_max": 1})
    first = add_class(factory, "zorb")
    second = add_class(factory, "plax")
    trainer.train_class(first)
    assert get(factory, first).status == Status.ready  # type: ignore[union-attr]
    assert get(factory, second).status == Status.queued  # type: ignore[union-attr]


def test_infrastructure_error_hands_every_batched_row_back(setup: Any, monkeypatch: Any) -> None:
    _, factory, trainer = setup
    first = add_class(factory, "zorb")
    second = add_class(factory, "plax")

    def broken(*_args: Any) -> None:
        raise RuntimeError("database went away")

    monkeypatch.setattr(trainer, "_run_batch", broken)
    with pytest.raises(RuntimeError):
        trainer.train_class(first)
    for class_id in (first, second):
        row = get(factory, class_id)
        assert row is not None and row.status == Status.queued and row.lease is None
        assert row.attempts == 1 and row.error and "database went away" in row.error


def test_reconciler_prunes_the_removal_log_after_its_retention(setup: Any) -> None:
    from sqlalchemy import func, select, update

    from service.crud import remove_class
    from service.models import ClassRemoval, read_removals_floor

    settings, factory, _ = setup
    producer = make_producer(settings)
    for name in ("a", "b"):
        class_id = add_class(factory, name, enqueued_at=utcnow())
        with factory() as session:
            remove_class(session=session, row=session.get(PersonalizedClass, class_id))
            session.commit()
    with factory() as session:
        session.execute(
            update(ClassRemoval)
            .where(ClassRemoval.name_key == "a")
            .values(
                removed_at=utcnow() - timedelta(seconds=settings.removal_log_retention_seconds + 5)
            )
        )
        session.commit()
    reconcile_once(factory, producer, settings)
    with factory() as session:
        assert session.scalars(select(ClassRemoval.name_key)).all() == ["b"]
        kept = session.scalar(select(func.min(ClassRemoval.generation)))
        assert 0 < read_removals_floor(session) < kept


def test_tenants_are_trained_apart_and_negatives_stay_within_a_tenant(
    setup: Any, monkeypatch: Any
) -> None:
    _, factory, trainer = setup
    import liteembed

    batches: list[list[str]] = []
    registered_names: list[set[str]] = []
    real = liteembed.learn_classes

    def recording(backend: Any, vocabulary: Any, requests: Any, **kwargs: Any) -> Any:
        batches.append(sorted(r.name for r in requests))
        registered_names.append(set(kwargs.get("registered") or {}))
        return real(backend, vocabulary, requests, **kwargs)

    monkeypatch.setattr(liteembed, "learn_classes", recording)
    # Ready classes of two tenants: only the own tenant's may be mined as negatives.
    for name, tenant in (("plax", "acme"), ("quim", "globex")):
        trainer.train_class(add_class(factory, name, tenant=tenant))
    batches.clear()
    registered_names.clear()

    # Queued classes of both tenants: a batch never mixes them.
    ours = add_class(factory, "zorb", tenant="acme")
    add_class(factory, "vrex", tenant="globex")
    trainer.train_class(ours)
    # The same images as plax: a re-learn of the two may follow, within the tenant.
    assert batches[0] == ["zorb"] and batches[1:] in ([], [["plax", "zorb"]])
    assert registered_names[0] == {"plax"}
    assert all(names <= {"plax"} for names in registered_names)
    row = get(factory, ours)
    assert row is not None and row.status == Status.ready and row.diagnostics is not None
    mined = {n["name"] for n in row.diagnostics["negatives"] if n["source"] == "registered"}
    assert "quim" not in mined


def test_the_model_recorded_defaults_are_the_base_of_the_training_config(
    setup: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from liteembed import config as engine_config

    settings, _, trainer = setup
    monkeypatch.setitem(engine_config.RECORDED_DEFAULTS, "liteembed-tiny", {"lambda_c": 2.5})
    trainer.settings = settings.model_copy(update={"train_steps": None, "train_options": {}})
    recorded = trainer.optimization_config("liteembed-tiny@random-0")
    assert recorded == engine_config.OptimizationConfig(lambda_c=2.5)
    assert trainer.optimization_config("other@x") == engine_config.OptimizationConfig()
    # the settings' options and step count go on top of the recorded defaults
    trainer.settings = settings.model_copy(
        update={"train_steps": 7, "train_options": {"augment_views": 0}}
    )
    both = trainer.optimization_config("liteembed-tiny@random-0")
    assert (both.lambda_c, both.steps, both.step_rule, both.augment_views) == (2.5, 7, "fixed", 0)
