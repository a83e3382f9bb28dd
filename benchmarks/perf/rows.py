"""Ready classes written straight into a server's database (random unit embeddings, no
training), and the wait until the server scores them."""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx
import numpy as np
from sqlalchemy import delete, select
from sqlalchemy.orm import Session, sessionmaker

from benchmarks.perf.harness import Server, test_image
from service.crud import insert_ready_classes, remove_class
from service.db import make_engine, make_session_factory, session_scope
from service.models import PersonalizedClass

# Rows built in memory at a time: 100,000 classes of a wide model are hundreds of MB.
CHUNK = 5000


def replace_ready_classes(database_url: str, model_id: str, count: int, dim: int, tag: str) -> None:
    """Delete every class and insert `count` ready ones with random unit embeddings."""
    engine = make_engine(database_url)
    factory = make_session_factory(engine)
    with session_scope(factory) as session:
        session.execute(delete(PersonalizedClass))
    insert_random_classes(factory, model_id, count, dim, tag, seed=count)
    engine.dispose()


def insert_random_classes(
    factory: sessionmaker[Session],
    model_id: str,
    count: int,
    dim: int,
    tag: str,
    *,
    seed: int,
    first: int = 0,
    tenant_of: Callable[[int], str] | None = None,
) -> None:
    """Insert `count` ready classes "TAG-i" with random unit embeddings and bump the generation;
    class i belongs to `tenant_of(i)` (default: the default tenant). One transaction, so the
    server sees every row at once, never a part of them."""
    rng = np.random.default_rng(seed)
    with session_scope(factory) as session:
        for start in range(first, first + count, CHUNK):
            numbers = range(start, min(start + CHUNK, first + count))
            vectors = rng.normal(size=(len(numbers), dim)).astype(np.float32)
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
            insert_ready_classes(
                session=session,
                model_id=model_id,
                names=[f"{tag}-{i}" for i in numbers],
                features=vectors,
                tenants=[tenant_of(i) for i in numbers] if tenant_of is not None else None,
            )


def delete_one_class(factory: sessionmaker[Session], model_id: str) -> None:
    """Delete the newest ready class the way the API does (logged in the removal log)."""
    cls = PersonalizedClass
    with session_scope(factory) as session:
        newest = session.scalars(
            select(cls).where(cls.model_id == model_id).order_by(cls.created_at.desc()).limit(1)
        ).one()
        remove_class(session=session, row=newest)


def wait_for_size(server: Server, size: int, tag: str, timeout: float = 600) -> float:
    """Until /classify ranks the new rows (the refresher picked up the generation)."""
    image = test_image(seed=5)
    want = min(size, 1000)
    started = time.perf_counter()
    with httpx.Client(base_url=server.url, timeout=300) as client:
        while time.perf_counter() - started < timeout:
            predictions = client.post(
                "/v1/classify",
                files={"image": ("q.jpg", image, "image/jpeg")},
                data={"top_k": want},
            ).json()["predictions"]
            if len(predictions) == want and all(
                p["label"].startswith(f"{tag}-") for p in predictions
            ):
                return time.perf_counter() - started
            time.sleep(0.2)
    raise RuntimeError(f"the server never showed {size} classes")
