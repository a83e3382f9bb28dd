"""The train job keeps the tenant's other classes whole: their exemplars are the engine's
protected evidence, a ready class whose exemplars a new class takes is re-learned beside it (once,
in the same run, stored together), the impact is recorded, and a run that dies before its store
changes nothing."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from sqlalchemy import select

from service.db import make_engine, make_session_factory
from service.models import (
    ClassImage,
    NegativeImage,
    PersonalizedClass,
    Status,
    read_generation,
)
from tests.helpers.images import COLOURS, image_bytes
from workers import Trainer
from workers.impact import ScoredClass, Taking, impact_of, takings, to_relearn


@pytest.fixture
def setup(database_url: str, make_settings: Any, shared_runtime: Any) -> Any:
    """SQLite and PostgreSQL: a re-learned class is written back only if its `updated_at` is
    the one read, a comparison each database makes with its own timestamps."""
    settings = make_settings(database_url)
    factory = make_session_factory(make_engine(settings.database_url))
    return factory, Trainer(settings, factory, shared_runtime)


def add_class(
    factory: Any, name: str, colour: str, *, seed: int = 0, negatives: str | None = None
) -> str:
    with factory() as session:
        row = PersonalizedClass(
            name=name,
            name_key=name.casefold(),
            model_id="liteembed-tiny@random-0",
            hints=[],
            confusers=[],
        )
        row.images = [
            ClassImage(position=i, data=image_bytes(COLOURS[colour], seed=seed + i))
            for i in range(3)
        ]
        if negatives is not None:
            row.negative_images = [
                NegativeImage(position=0, data=image_bytes(COLOURS[negatives], seed=77))
            ]
        session.add(row)
        session.commit()
        return row.id


def get(factory: Any, class_id: str) -> PersonalizedClass:
    with factory() as session:
        row = session.get(PersonalizedClass, class_id)
        assert row is not None
        return row


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Each learn_classes call of the job: its requests and engine inputs."""
    import liteembed

    calls: list[dict[str, Any]] = []
    real = liteembed.learn_classes

    def recording(backend: Any, vocabulary: Any, requests: Any, **kwargs: Any) -> Any:
        calls.append({"requests": list(requests), **kwargs})
        return real(backend, vocabulary, requests, **kwargs)

    monkeypatch.setattr(liteembed, "learn_classes", recording)
    return calls


def test_ready_classes_are_protected_and_a_new_class_keeps_its_threshold_and_features(
    setup: Any, recorded: list[dict[str, Any]], shared_runtime: Any
) -> None:
    factory, trainer = setup
    first = add_class(factory, "zorb", "green")
    trainer.train_class(first)
    zorb = get(factory, first)
    assert zorb.status == Status.ready and zorb.threshold is not None
    assert zorb.impact == [] and zorb.exemplar_features is not None
    dim = int(zorb.dim or 0)
    exemplars = np.frombuffer(zorb.exemplar_features, dtype=np.float32).reshape(-1, dim)
    assert exemplars.shape == (3, dim)

    second = add_class(factory, "plax", "magenta", negatives="yellow")
    recorded.clear()
    trainer.train_class(second)
    call = recorded[0]
    assert [r.name for r in call["requests"]] == ["plax"]
    assert len(call["requests"][0].negative_images) == 1
    assert call["bank"] is shared_runtime.get().bank
    (protected,) = call["protected"]
    assert protected.name == "zorb"
    np.testing.assert_allclose(protected.image_features.numpy(), exemplars)
    assert get(factory, second).status == Status.ready


def test_a_class_stored_without_exemplar_features_gets_them_once_without_a_matrix_change(
    setup: Any, recorded: list[dict[str, Any]]
) -> None:
    factory, trainer = setup
    first = add_class(factory, "zorb", "green")
    trainer.train_class(first)
    with factory() as session:  # as a class stored before exemplar features were kept
        row = session.get(PersonalizedClass, first)
        assert row is not None
        kept = row.exemplar_features
        row.exemplar_features = None
        session.commit()
        updated_at = get(factory, first).updated_at
    recorded.clear()
    trainer.train_class(add_class(factory, "plax", "magenta"))
    row = get(factory, first)
    assert row.exemplar_features is not None and row.updated_at == updated_at
    assert recorded[0]["protected"][0].image_features.shape[0] == 3
    # Encoded from the stored images, as the engine encodes its un-augmented views.
    dim = int(row.dim or 0)
    np.testing.assert_allclose(
        np.frombuffer(row.exemplar_features, dtype=np.float32).reshape(-1, dim),
        np.frombuffer(kept or b"", dtype=np.float32).reshape(-1, dim),
        atol=1e-4,
    )


def test_a_class_that_takes_a_ready_class_s_exemplars_is_learned_again_with_it_once(
    setup: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The new class's first word is made to take one of the ready class's exemplars (its text
    feature set to that exemplar's image feature): the two are learned again together, once, and
    stored in one commit; the ready class is rewritten in place (same id) when the re-learn
    helped, and the impact says what was taken and whether the re-learn was kept."""
    import torch

    import liteembed

    factory, trainer = setup
    first = add_class(factory, "zorb", "green")
    trainer.train_class(first)
    before = get(factory, first)
    dim = int(before.dim or 0)
    taken = np.frombuffer(before.exemplar_features or b"", dtype=np.float32).reshape(-1, dim)[0]
    with factory() as session:
        generation = read_generation(session)

    real = liteembed.learn_classes
    calls: list[list[str]] = []

    def taking(backend: Any, vocabulary: Any, requests: Any, **kwargs: Any) -> Any:
        calls.append(sorted(r.name for r in requests))
        learned = real(backend, vocabulary, requests, **kwargs)
        if len(calls) == 1:  # the first word of plax lands on zorb's first exemplar
            learned[0].text_feature = torch.from_numpy(taken.copy())
        return learned

    monkeypatch.setattr(liteembed, "learn_classes", taking)
    second = add_class(factory, "plax", "magenta")
    trainer.train_class(second)
    assert calls == [["plax"], ["plax", "zorb"]]  # one re-learn, no loop
    plax, zorb = get(factory, second), get(factory, first)
    assert plax.status == zorb.status == Status.ready
    (impact,) = plax.impact or []
    assert impact["class_id"] == first and impact["name"] == "zorb" and impact["of"] == 3
    assert 1 <= impact["taken"] <= 3
    if impact["relearned"]:
        assert zorb.embedding != before.embedding and zorb.updated_at > before.updated_at
        assert zorb.threshold is not None and zorb.attempts == before.attempts
        assert 0 <= impact["remaining"] <= 3
    else:  # the re-learn took more than it gave back: the first words were kept
        assert (zorb.embedding, zorb.updated_at) == (before.embedding, before.updated_at)
    assert zorb.impact == []  # its own registration took nothing
    with factory() as session:
        assert read_generation(session) == generation + 1  # one commit for both


def test_a_run_that_dies_while_re_learning_changes_nothing(
    setup: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Killed between the first learn and the store (here: the re-learn raises as a dying
    process would stop): the ready class is untouched and the new one is handed back."""
    import liteembed

    factory, trainer = setup
    first = add_class(factory, "zorb", "green")
    trainer.train_class(first)
    before = get(factory, first)
    real = liteembed.learn_classes
    calls = []

    def dying_on_the_relearn(backend: Any, vocabulary: Any, requests: Any, **kwargs: Any) -> Any:
        calls.append(len(requests))
        if len(requests) > 1:
            raise KeyboardInterrupt  # not an engine error: the job ends here
        return real(backend, vocabulary, requests, **kwargs)

    monkeypatch.setattr(liteembed, "learn_classes", dying_on_the_relearn)
    second = add_class(factory, "plax", "green")
    with pytest.raises(KeyboardInterrupt):
        trainer.train_class(second)
    assert calls == [1, 2]
    after = get(factory, first)
    assert (after.embedding, after.updated_at, after.status) == (
        before.embedding,
        before.updated_at,
        Status.ready,
    )
    plax = get(factory, second)
    assert plax.status == Status.queued and plax.embedding is None and plax.lease is None
    monkeypatch.setattr(liteembed, "learn_classes", real)
    trainer.train_class(second)  # sent again: learned, re-learned, both ready
    assert get(factory, second).status == get(factory, first).status == Status.ready
    with factory() as session:
        ids = session.scalars(select(PersonalizedClass.id)).all()
    assert sorted(ids) == sorted([first, second])


def test_takings_and_the_classes_to_relearn() -> None:
    e = np.eye(3, dtype=np.float32)
    classes = [
        ScoredClass("a", "a", e[0], np.stack([e[0], e[1]])),  # one exemplar goes to b
        ScoredClass("b", "b", e[1], np.stack([e[1]])),
        ScoredClass("c", "c", e[2], np.stack([e[2], e[0]])),  # one goes to a (settled-settled)
    ]
    found = takings(classes)
    assert {(t.victim, t.taker, t.taken, t.of) for t in found} == {
        ("a", "b", 1, 2),
        ("c", "a", 1, 2),
    }
    assert to_relearn(found, {"b"}, limit=8) == ["a"]
    # a new class losing an exemplar to a settled one (b), and taking one from another (c)
    assert to_relearn(found, {"a"}, limit=8) == ["b", "c"]
    assert to_relearn(found, {"a"}, limit=0) == []
    assert to_relearn(found, {"a", "b", "c"}, limit=8) == []
    # The new class a's impact lists both ways: what it took (c's) and what took its own (b).
    names = {"b": "bee", "c": "sea"}
    after = [Taking("a", "b", 0, 2), Taking("c", "a", 1, 2)]
    items = impact_of("a", found, names, {"b", "c"}, after)
    assert sorted(items, key=lambda i: str(i["class_id"])) == [
        {"class_id": "b", "name": "bee", "direction": "taken_by", "taken": 1, "of": 2,
         "relearned": True, "remaining": 0},
        {"class_id": "c", "name": "sea", "direction": "took", "taken": 1, "of": 2,
         "relearned": True, "remaining": 1},
    ]  # fmt: skip
    assert impact_of("a", found, {}, set(), None) == []
