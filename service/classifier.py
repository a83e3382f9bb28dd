"""The in-memory class matrix used by /classify, kept in step with the database.

Each API process holds one immutable snapshot: a contiguous float32 (C x D) matrix of the ready
classes of the active model plus their names and ids. A background thread compares the database's
generation counter with the snapshot's at most every `classifier_refresh_seconds`, rebuilds off the
request path when they differ, and swaps the reference (an atomic assignment), so a request always
sees one consistent snapshot.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from service.models import PersonalizedClass, Status, read_generation

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClassMatrix:
    generation: int
    model_id: str
    matrix: np.ndarray  # (C, D) float32, C-contiguous, rows L2-normalised
    names: tuple[str, ...]
    ids: tuple[str, ...]
    index_by_key: dict[str, int] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return len(self.ids)


def empty_matrix(model_id: str, dim: int) -> ClassMatrix:
    return ClassMatrix(-1, model_id, np.zeros((0, dim), dtype=np.float32), (), ())


def build_matrix(session: Session, model_id: str, dim: int) -> ClassMatrix:
    # Read the generation first: a change landing during the scan makes the next check rebuild.
    generation = read_generation(session)
    rows = session.execute(
        select(
            PersonalizedClass.id,
            PersonalizedClass.name,
            PersonalizedClass.name_key,
            PersonalizedClass.embedding,
        )
        .where(PersonalizedClass.model_id == model_id, PersonalizedClass.status == Status.ready)
        .order_by(PersonalizedClass.created_at, PersonalizedClass.id)
    ).all()
    vectors = [np.frombuffer(r.embedding, dtype=np.float32) for r in rows]
    keep = [i for i, v in enumerate(vectors) if v.shape[0] == dim]
    if len(keep) != len(rows):
        log.warning("%d ready classes have a wrong dimension; skipped", len(rows) - len(keep))
    matrix = (
        np.ascontiguousarray(np.stack([vectors[i] for i in keep]), dtype=np.float32)
        if keep
        else np.zeros((0, dim), dtype=np.float32)
    )
    return ClassMatrix(
        generation=generation,
        model_id=model_id,
        matrix=matrix,
        names=tuple(rows[i].name for i in keep),
        ids=tuple(rows[i].id for i in keep),
        index_by_key={rows[i].name_key: n for n, i in enumerate(keep)},
    )


class ClassMatrixCache:
    def __init__(self, session_factory: sessionmaker[Session], refresh_seconds: float) -> None:
        self._factory = session_factory
        self._refresh_seconds = refresh_seconds
        self._snapshot: ClassMatrix | None = None
        self._model: tuple[str, int] | None = None
        self._lock = threading.Lock()  # one rebuild at a time
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def bind_model(self, model_id: str, dim: int) -> None:
        self._model = (model_id, dim)

    def snapshot(self, model_id: str, dim: int) -> ClassMatrix:
        """The current snapshot; built synchronously only the very first time."""
        if self._model != (model_id, dim):
            self.bind_model(model_id, dim)
        snap = self._snapshot
        if snap is None or snap.model_id != model_id:
            self.refresh(force=True)
            snap = self._snapshot
        assert snap is not None
        return snap

    def refresh(self, *, force: bool = False) -> None:
        if self._model is None:
            return
        model_id, dim = self._model
        with self._lock:
            with self._factory() as session:
                current = self._snapshot
                if (
                    not force
                    and current is not None
                    and current.model_id == model_id
                    and read_generation(session) == current.generation
                ):
                    return
                snap = build_matrix(session, model_id, dim)
            self._snapshot = snap
        log.debug("class matrix rebuilt: %d classes, generation %d", snap.size, snap.generation)

    def refresh_now(self) -> None:
        """After a change made by this process: rebuild before answering the next request."""
        try:
            self.refresh()
        except Exception:
            log.exception("class matrix refresh failed")
            self._wake.set()

    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="liteembed-classifier", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self._refresh_seconds)
            self._wake.clear()
            if self._stop.is_set():
                break
            try:
                self.refresh()
            except Exception:
                log.exception("class matrix refresh failed; keeping the previous snapshot")
                time.sleep(self._refresh_seconds)


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max()
    exp = np.exp(shifted)
    return exp / exp.sum()
