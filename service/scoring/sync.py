"""Keeping this process's class matrix in step with the database.

Each API process holds one snapshot (`service/scoring/matrix.py`). A background thread compares
the database's generation counter with the snapshot's at most every `classifier_refresh_seconds`,
updates off the request path when they differ, and swaps the reference (an atomic assignment), so
a request always sees one consistent snapshot.

/classify does not wait for that thread: `catch_up` reads the generation (one primary-key read)
as a request starts and, when the snapshot is behind, syncs before the request is scored, so a
class any process has answered `ready` for (or deleted) is scored accordingly. Concurrent requests
behind the same change share one sync.

Updates are incremental: classes that became ready are appended, classes that left are
dropped using the removal log (`class_removals`), and a ready class whose row was rewritten (a
re-learned class keeps its id) is dropped and appended anew. A full re-read of every embedding,
seconds of per-row Python at 10^5 classes, happens only at start, on a model change, or when the
increments cannot be proven to account for every row.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from datetime import datetime

import numpy as np
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session, sessionmaker

from service.db import is_unavailable, make_engine, raw_scalar
from service.models import (
    GENERATION_ROW,
    ClassRemoval,
    Generation,
    PersonalizedClass,
    Status,
    read_generation,
    read_removals_floor,
)
from service.outage import OutageLog
from service.scoring.matrix import (
    MATRIX_DTYPES,
    ClassMatrix,
    PackedStrings,
    RowStore,
    assemble,
    scoped_key,
    spare_rows,
)

log = logging.getLogger(__name__)

# The generation, read by every /classify (`catch_up`).
_GENERATION = select(Generation.value).where(Generation.id == GENERATION_ROW)
# During a database outage, how often a /classify tries the database again (the others answer
# from the class matrix at once).
PROBE_SECONDS = 1.0
# Rows fetched per round trip while building: bounds the transient Python objects at 10^5 classes.
_FETCH_ROWS = 4096
# What the class matrix holds of each ready row.
_MATRIX_COLUMNS = (
    PersonalizedClass.id,
    PersonalizedClass.name,
    PersonalizedClass.tenant,
    PersonalizedClass.name_key,
    PersonalizedClass.embedding,
    PersonalizedClass.threshold,
    PersonalizedClass.updated_at,
)


def build_matrix(session: Session, model_id: str, dim: int, dtype: str = "float32") -> ClassMatrix:
    """A snapshot of every ready class of `model_id` read from the database (rows of another
    width are skipped, and such a snapshot is never updated incrementally)."""
    # Read the generation first: a change landing during the scan makes the next check rebuild.
    generation = read_generation(session)
    cls = PersonalizedClass
    ready = (cls.model_id == model_id, cls.status == Status.ready)
    expected = int(session.scalar(select(func.count()).select_from(cls).where(*ready)) or 0)
    # Preallocated and filled in place, streamed in chunks: the peak is the matrix itself plus
    # one chunk of rows, not a Python list of 10^5 arrays.
    # Spare rows from the start, so the first appends do not copy the matrix.
    matrix = np.empty((expected + spare_rows(expected), dim), dtype=MATRIX_DTYPES[dtype])
    names: list[PackedStrings] = []
    keys: list[PackedStrings] = []
    ids: list[PackedStrings] = []
    thresholds: list[float | None] = []
    filled = skipped = 0
    result = session.execute(
        select(*_MATRIX_COLUMNS)
        .where(*ready)
        .order_by(cls.created_at, cls.id)
        .execution_options(yield_per=_FETCH_ROWS)
    )
    ready_through: datetime | None = None
    for chunk in result.partitions(_FETCH_ROWS):
        latest = max(r.updated_at for r in chunk)
        ready_through = latest if ready_through is None else max(ready_through, latest)
        good = [r for r in chunk if r.embedding is not None and len(r.embedding) == 4 * dim]
        skipped += len(chunk) - len(good)
        if not good:
            continue
        if filled + len(good) > matrix.shape[0]:  # rows became ready after the count
            grown = filled + len(good)
            matrix = np.resize(matrix, (grown + spare_rows(grown), dim))
        block = np.frombuffer(b"".join(r.embedding for r in good), dtype=np.float32)
        matrix[filled : filled + len(good)] = block.reshape(len(good), dim)
        filled += len(good)
        names.append(PackedStrings([r.name for r in good]))
        keys.append(PackedStrings([scoped_key(r.tenant, r.name_key) for r in good]))
        ids.append(PackedStrings([r.id for r in good]))
        thresholds += [r.threshold for r in good]
    if skipped:
        log.warning("%d ready classes have a wrong dimension; skipped", skipped)
    # A skipped row makes counts disagree with the matrix: such a snapshot is never extended.
    through = ready_through if not skipped else None
    snap = assemble(generation, model_id, matrix[:filled], names, keys, ids, through, thresholds)
    return dataclasses.replace(snap, store=RowStore(matrix, filled))


def update_matrix(session: Session, snap: ClassMatrix, dim: int) -> ClassMatrix | None:
    """`snap` less the classes that left and plus the ones that became ready (or were rewritten
    while ready: re-learned) since it was built, or None when that cannot be proven to account
    for every ready row: then the caller rebuilds in full.

    Why: a full rebuild at 10^5 classes is seconds of per-row Python holding the GIL, which
    stalls requests; an update touches only the changed rows plus one C-speed pass over the
    matrix when rows leave.
    """
    if snap.ready_through is None:
        return None
    generation = read_generation(session)
    cls = PersonalizedClass
    removed = session.execute(
        select(ClassRemoval.class_id, ClassRemoval.tenant, ClassRemoval.name_key).where(
            ClassRemoval.model_id == snap.model_id, ClassRemoval.generation > snap.generation
        )
    ).all()
    # Read after the log: a prune that landed in between moves the floor, and is seen here.
    if read_removals_floor(session) > snap.generation:
        return None
    leaving = {
        row
        for class_id, tenant, key in removed
        if (row := snap.index_of(scoped_key(tenant, key), class_id)) is not None
    }
    ready = (cls.model_id == snap.model_id, cls.status == Status.ready)
    total = int(session.scalar(select(func.count()).select_from(cls).where(*ready)) or 0)
    rows = session.execute(
        select(*_MATRIX_COLUMNS)
        .where(*ready, cls.updated_at > snap.ready_through)
        .order_by(cls.created_at, cls.id)
    ).all()
    # A row already in the snapshot was rewritten while ready: its old version leaves, and the
    # new one is appended below with the new classes (one id, one row).
    leaving |= {
        row
        for r in rows
        if (row := snap.index_of(scoped_key(r.tenant, r.name_key), r.id)) is not None
    }
    gone = sorted(leaving)
    # Every ready row is either kept from the snapshot or new; otherwise a change was missed
    # (a removal not logged, a row committed with an older timestamp): rebuild.
    if total != snap.size - len(gone) + len(rows):
        return None
    if any(r.embedding is None or len(r.embedding) != 4 * dim for r in rows):
        return None
    updated = snap.without(gone) if gone else snap
    if rows:
        block = np.frombuffer(b"".join(r.embedding for r in rows), dtype=np.float32)
        updated = updated.with_rows(
            block.reshape(len(rows), dim),
            [r.name for r in rows],
            [scoped_key(r.tenant, r.name_key) for r in rows],
            [r.id for r in rows],
            [r.threshold for r in rows],
        )
        latest = max(r.updated_at for r in rows)
        updated = dataclasses.replace(updated, ready_through=max(snap.ready_through, latest))
    return dataclasses.replace(updated, generation=generation)


class ClassMatrixCache:
    """This process's current snapshot, and the thread that keeps it in step with the database."""

    def __init__(
        self,
        session_factory: sessionmaker[Session],
        refresh_seconds: float,
        dtype: str = "float32",
    ) -> None:
        if dtype not in MATRIX_DTYPES:
            raise ValueError(
                f"class matrix dtype must be one of {sorted(MATRIX_DTYPES)}, not {dtype!r}"
            )
        self._factory = session_factory
        self._engine: Engine = session_factory.kw["bind"]
        # The per-request generation read's own pool (`make_engine(for_reads=True)`); an
        # in-memory SQLite database exists only in its own engine's connection, so it shares
        # that one.
        url = self._engine.url
        in_memory = url.get_backend_name() == "sqlite" and url.database in (None, "", ":memory:")
        self._read_engine = (
            self._engine
            if in_memory
            else make_engine(url.render_as_string(hide_password=False), for_reads=True)
        )
        # The per-request read, as the dialect's SQL text (its one parameter is a constant).
        self._generation_sql = str(
            _GENERATION.compile(
                dialect=self._engine.dialect, compile_kwargs={"literal_binds": True}
            )
        )
        self._refresh_seconds = refresh_seconds
        self._dtype = dtype
        self._snapshot: ClassMatrix | None = None
        self._model: tuple[str, int] | None = None
        self._lock = threading.Lock()  # one rebuild at a time
        # Snapshots swapped in since start (for tests: concurrent catch-ups share one sync).
        self.syncs = 0
        self._database = OutageLog(
            "database (class matrix refresh)", log, meanwhile="classifying with the last snapshot"
        )
        self._probe_lock = threading.Lock()
        self._next_probe = 0.0
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def current(self) -> ClassMatrix | None:
        """The snapshot as it is now, without building one (for metrics)."""
        return self._snapshot

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

    def catch_up(self, model_id: str, dim: int, *, stale_ok: bool = False) -> bool:
        """Bring the snapshot up to every class change committed before this call; True when
        it is, False when it is answered from as it stands (see `stale_ok`).

        One primary-key read of the generation; only when the snapshot is behind it, an
        (incremental) sync before returning. Why a read per request: a client that saw `ready`
        from any API process must have the class scored by the next /classify, and this
        process cannot know about another's commit otherwise. Callers behind the same change
        share one sync: whoever takes the lock after it finds the snapshot current.

        Database errors propagate, unless `stale_ok` and the database is unreachable while a
        snapshot of `model_id` is held: then False, and the caller answers from the snapshot,
        marked as possibly stale. Once an outage is known, one request per `PROBE_SECONDS`
        tries the database and the others answer at once (a partitioned database would cost
        each a connect timeout); the first that reaches it ends the outage.
        """
        if self._model != (model_id, dim):
            self.bind_model(model_id, dim)
        if stale_ok and self._database.down and self.holds(model_id) and not self._probe_due():
            return False
        try:
            self._catch_up(model_id)
        except Exception as exc:
            if not (stale_ok and is_unavailable(exc) and self.holds(model_id)):
                raise
            self._database.failed(exc)
            return False
        self._database.succeeded()
        return True

    def _probe_due(self) -> bool:
        with self._probe_lock:
            now = time.monotonic()
            if now < self._next_probe:
                return False
            self._next_probe = now + PROBE_SECONDS
            return True

    def holds(self, model_id: str) -> bool:
        """Whether a snapshot of `model_id` is held (something to answer from in an outage)."""
        snap = self._snapshot
        return snap is not None and snap.model_id == model_id

    def _catch_up(self, model_id: str) -> None:
        target = self._read_generation()
        if self._covers(model_id, target):
            return
        with self._lock:
            if self._covers(model_id, target):  # synced by a concurrent caller meanwhile
                return
            self._sync(force=False)

    def _read_generation(self) -> int:
        return int(raw_scalar(self._read_engine, self._generation_sql) or 0)

    def _covers(self, model_id: str, generation: int) -> bool:
        snap = self._snapshot
        return snap is not None and snap.model_id == model_id and snap.generation >= generation

    def refresh(self, *, force: bool = False) -> None:
        if self._model is None:
            return
        with self._lock:
            self._sync(force=force)

    def _sync(self, *, force: bool) -> None:
        """Update (or rebuild) the snapshot from the database; the caller holds the lock."""
        assert self._model is not None
        model_id, dim = self._model
        with self._factory() as session:
            current = self._snapshot
            if force or (current is not None and current.model_id != model_id):
                current = None  # rebuilt in full
            if current is not None and read_generation(session) == current.generation:
                return
            snap = update_matrix(session, current, dim) if current is not None else None
            if snap is None:
                snap = build_matrix(session, model_id, dim, self._dtype)
        # Here, not on the model thread, where the first request within a tenant would build it
        # and hold up every request of its batch.
        snap.index_tenants()
        self._snapshot = snap
        self.syncs += 1
        log.debug(
            "class matrix now: %d classes, %.1f MB, generation %d",
            snap.size,
            snap.nbytes / 1e6,
            snap.generation,
        )

    def refresh_now(self) -> None:
        """After a change made by this process: rebuild before answering the next request."""
        try:
            self.refresh()
            self._database.succeeded()
        except Exception as exc:
            self._refresh_failed(exc, "the refresh thread retries")
            self._wake.set()

    def _refresh_failed(self, exc: Exception, meanwhile: str) -> None:
        # An unreachable database is one line per outage (it fails every second until it is
        # back); anything else is a bug worth its traceback each time.
        if is_unavailable(exc):
            self._database.failed(exc)
        else:
            log.exception("class matrix refresh failed; %s", meanwhile)

    def start(self) -> None:
        if self._thread is not None:
            return
        # Published once started: `stop` (another thread, at shutdown) joins only a started
        # thread, and one that starts after `stop` finds the stop flag set and ends at once.
        thread = threading.Thread(target=self._run, name="liteembed-classifier", daemon=True)
        thread.start()
        self._thread = thread

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if self._read_engine is not self._engine:
            self._read_engine.dispose()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self._refresh_seconds)
            self._wake.clear()
            if self._stop.is_set():
                break
            try:
                self.refresh()
                self._database.succeeded()
            except Exception as exc:
                self._refresh_failed(exc, "keeping the previous snapshot")
                time.sleep(self._refresh_seconds)
