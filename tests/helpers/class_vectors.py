"""Class vectors and snapshots for the scoring tests, the full-sort reference top-k, and ready
classes written straight into (and removed from) a test database."""

from __future__ import annotations

from typing import Any

import numpy as np

from service.scoring.matrix import ClassMatrix, assemble


def random_matrix(count: int, dim: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    m = rng.normal(size=(count, dim)).astype(np.float32)
    return np.ascontiguousarray(m / np.linalg.norm(m, axis=1, keepdims=True))


def snapshot_of(matrix: np.ndarray) -> ClassMatrix:
    count = matrix.shape[0]
    names = [f"class {i}" for i in range(count)]
    return assemble(
        1, "m", matrix, names, [n.casefold() for n in names], [f"id-{i}" for i in range(count)]
    )


def full_sort_reference(logits: np.ndarray, scale: float, k: int) -> tuple[np.ndarray, Any]:
    scaled = scale * logits.astype(np.float64)
    probabilities = np.exp(scaled - scaled.max())
    probabilities /= probabilities.sum()
    order = np.argsort(-probabilities, kind="stable")[:k]
    return order, probabilities[order]


def insert_ready(url: str, model_id: str, vectors: np.ndarray, first: int = 0) -> None:
    """Insert ready classes "Class i" (name_key "class i") with `vectors` as their embeddings
    and bump the generation, in one transaction."""
    from service.crud import insert_ready_classes
    from service.db import make_engine, session_scope
    from service.db import make_session_factory as factory_of

    engine = make_engine(url)
    numbers = range(first, first + len(vectors))
    with session_scope(factory_of(engine)) as session:
        insert_ready_classes(
            session=session,
            model_id=model_id,
            names=[f"Class {n}" for n in numbers],
            features=vectors,
            ids=[f"00000000-0000-0000-0000-{n:012d}" for n in numbers],
        )
    engine.dispose()


def remove_classes(factory: Any, *keys: str) -> None:
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
