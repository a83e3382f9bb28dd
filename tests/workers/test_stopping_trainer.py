"""A stopping worker's trainer hands its classes back: the optimisation ends at its next step,
every row it held is queued again, and the caller learns which ids to send again."""

from __future__ import annotations

import threading
import time
from typing import Any

from service.db import make_engine, make_session_factory
from service.models import PersonalizedClass, Status
from tests.workers.test_train_actor import add_class, get
from workers import Trainer


def test_stop_soon_hands_the_running_batch_back(
    sqlite_url: str, make_settings: Any, shared_runtime: Any
) -> None:
    settings = make_settings(
        sqlite_url, train_steps=100_000, train_options={"early_stopping": False}
    )
    factory = make_session_factory(make_engine(settings.database_url))
    trainer = Trainer(settings, factory, shared_runtime)
    first, companion = add_class(factory, "zorb"), add_class(factory, "plax")
    handed_back: list[list[str]] = []
    run = threading.Thread(target=lambda: handed_back.append(trainer.train_class(first)))
    run.start()
    deadline = time.monotonic() + 60
    while (row := get(factory, first)) is not None and row.progress <= 0:
        assert time.monotonic() < deadline and run.is_alive()
        time.sleep(0.1)

    trainer.stop_soon()
    run.join(timeout=30)
    assert not run.is_alive()
    assert handed_back and sorted(handed_back[0]) == sorted([first, companion])
    for class_id in (first, companion):
        row = get(factory, class_id)
        assert row is not None and row.status == Status.queued and row.lease is None
        assert row.attempts == 0  # a stop is not an attempt: restarts never fail a class
    # A message that arrives while stopping claims nothing and is handed straight back.
    assert trainer.train_class(first) == [first]
    with factory() as session:
        assert session.get(PersonalizedClass, first).status == Status.queued  # type: ignore[union-attr]
