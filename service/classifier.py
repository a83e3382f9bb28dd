"""The in-memory class matrix used by /classify, kept in step with the database.

Each API process holds one immutable snapshot: a contiguous (C x D) matrix (float32, or float16
to halve the memory) of the ready classes of the active model, plus their names, name keys and
ids packed into a few flat arrays (no Python object per class, so 10^5 classes cost the matrix
plus a few MB). A background thread compares the database's generation counter with the
snapshot's at most every `classifier_refresh_seconds`, updates off the request path when they
differ, and swaps the reference (an atomic assignment), so a request always sees one consistent
snapshot.

Updates are incremental: classes that became ready are appended (into spare rows of the same
buffer when there are any), and classes that left are dropped using the removal log
(`class_removals`). A full re-read of every embedding, seconds of per-row Python at 10^5
classes, happens only at start, on a model change, or when the increments cannot be proven to
account for every row.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import torch
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from service.models import (
    ClassRemoval,
    PersonalizedClass,
    Status,
    read_generation,
    read_removals_floor,
)

log = logging.getLogger(__name__)

# Rows fetched per round trip while building: bounds the transient Python objects at 10^5 classes.
_FETCH_ROWS = 4096
# Beyond this many classes, top-k picks candidates with argpartition (O(C)) before sorting them.
_PARTITION_FROM = 64
# Spare rows reserved when an append has to grow the matrix: appends then write into the spare
# rows instead of copying the whole matrix each time (the copy of 200 MB was what stalled).
_SPARE_FRACTION = 8  # one spare row per 8 classes, at least _SPARE_MIN
_SPARE_MIN = 256
# Up to this many rows leaving at once, the kept rows are copied run by run.
_SLICE_COPY_MAX = 1024

_DTYPES = {"float32": np.float32, "float16": np.float16}


class PackedStrings:
    """Many short strings in one UTF-8 buffer plus offsets: two objects, whatever the count."""

    def __init__(self, values: list[str] | None = None) -> None:
        encoded = [v.encode() for v in values or []]
        self._buffer = b"".join(encoded)
        self._offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        if encoded:
            np.cumsum([len(e) for e in encoded], out=self._offsets[1:])

    @classmethod
    def join(cls, parts: list[PackedStrings]) -> PackedStrings:
        packed = cls()
        packed._buffer = b"".join(p._buffer for p in parts)
        offsets = [np.zeros(1, dtype=np.int64)]
        base = 0
        for p in parts:
            offsets.append(p._offsets[1:] + base)
            base += len(p._buffer)
        packed._offsets = np.concatenate(offsets)
        return packed

    def take(self, keep: np.ndarray) -> PackedStrings:
        """The strings where the boolean mask `keep` is true, in order; vectorised, no loop."""
        lengths = np.diff(self._offsets)
        packed = PackedStrings()
        selected = np.frombuffer(self._buffer, dtype=np.uint8)[np.repeat(keep, lengths)]
        packed._buffer = selected.tobytes()
        packed._offsets = np.zeros(int(keep.sum()) + 1, dtype=np.int64)
        np.cumsum(lengths[keep], out=packed._offsets[1:])
        return packed

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def __getitem__(self, index: int) -> str:
        start, end = self._offsets[index], self._offsets[index + 1]
        return self._buffer[start:end].decode()

    def __iter__(self):  # type: ignore[no-untyped-def]
        return (self[i] for i in range(len(self)))

    @property
    def nbytes(self) -> int:
        return len(self._buffer) + self._offsets.nbytes


def _spare_rows(count: int) -> int:
    return max(count // _SPARE_FRACTION, _SPARE_MIN)


def _key_hash(key: str) -> np.int64:
    # Python's own string hash: cached, C-speed, and only ever compared within this process.
    return np.int64(hash(key))


class RowStore:
    """A matrix buffer with spare rows, shared by the snapshots appended from one another.

    Snapshots are immutable views of its first `used` rows at their time; an append writes only
    rows no snapshot can see yet. `used` says which snapshot is the tip: only the tip may append
    in place (any other snapshot copies), so two snapshots never write the same spare rows.
    """

    def __init__(self, buffer: np.ndarray, used: int) -> None:
        self.buffer = buffer
        self.used = used


@dataclass(frozen=True)
class ClassMatrix:
    generation: int
    model_id: str
    matrix: np.ndarray  # (C, D) float32 or float16, C-contiguous, rows L2-normalised
    names: PackedStrings
    keys: PackedStrings  # name_key of each class (NFC + casefold)
    ids: PackedStrings
    # name_key lookup without a dict: sorted 64-bit hashes and the row each came from.
    key_hashes: np.ndarray
    key_rows: np.ndarray
    # Latest `updated_at` among the rows in the matrix: newer ready rows can be appended.
    ready_through: datetime | None = None
    # The buffer `matrix` is a view of, when it has spare rows for appends.
    store: RowStore | None = None
    # Copies of `matrix` on an accelerator, made on first use there (never copied by replace).
    _on_device: dict[str, torch.Tensor] = dataclasses.field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    @property
    def size(self) -> int:
        return int(self.matrix.shape[0])

    @property
    def nbytes(self) -> int:
        """Memory held by this snapshot (what grows with the class count)."""
        matrix = self.store.buffer if self.store is not None else self.matrix
        return int(
            matrix.nbytes
            + self.names.nbytes
            + self.keys.nbytes
            + self.ids.nbytes
            + self.key_hashes.nbytes
            + self.key_rows.nbytes
        )

    def index_of(self, key: str, class_id: str | None = None) -> int | None:
        """Row of the class whose name_key is `key` (and whose id is `class_id`, if given)."""
        target = _key_hash(key)
        start = int(np.searchsorted(self.key_hashes, target, side="left"))
        while start < len(self.key_hashes) and self.key_hashes[start] == target:
            row = int(self.key_rows[start])
            # A hash collision must not return a stranger, nor a new class under an old name.
            if self.keys[row] == key and (class_id is None or self.ids[row] == class_id):
                return row
            start += 1
        return None

    def without(self, rows: list[int]) -> ClassMatrix:
        """This snapshot less `rows`, with the order of the others kept: one C-speed pass over
        the matrix and the packed strings; Python loops only over the removed rows."""
        keep = np.ones(self.size, dtype=bool)
        keep[rows] = False
        kept = int(keep.sum())
        buffer = np.empty((kept + _spare_rows(kept), self.matrix.shape[1]), self.matrix.dtype)
        if len(rows) <= _SLICE_COPY_MAX:
            # The runs between removed rows, each one contiguous copy: at 10^5 x 512 rows it
            # took 28 ms against 58 ms for a boolean index and 93 ms for np.compress (one-off
            # timing on the 2-core VM).
            edges = [-1, *sorted(rows), self.size]
            filled = 0
            for after, before in zip(edges[:-1], edges[1:], strict=True):
                run = before - after - 1
                buffer[filled : filled + run] = self.matrix[after + 1 : before]
                filled += run
        else:
            buffer[:kept] = self.matrix[keep]
        new_row = np.cumsum(keep) - 1  # old row -> row after the removal
        entries = keep[self.key_rows]
        return dataclasses.replace(
            self,
            matrix=buffer[:kept],
            names=self.names.take(keep),
            keys=self.keys.take(keep),
            ids=self.ids.take(keep),
            key_hashes=self.key_hashes[entries],
            key_rows=new_row[self.key_rows[entries]],
            store=RowStore(buffer, kept),
        )

    def with_rows(
        self, block: np.ndarray, names: list[str], keys: list[str], ids: list[str]
    ) -> ClassMatrix:
        """This snapshot plus the rows of `block` (float32, L2-normalised) at the end.

        Written into spare rows when this snapshot is the tip of its store, so the cost is the
        new rows, not the matrix; otherwise (or when full) copied once into a bigger buffer.
        """
        size, count = self.size, block.shape[0]
        store = self.store
        if store is None or store.used != size or store.buffer.shape[0] < size + count:
            grown = size + count
            buffer = np.empty((grown + _spare_rows(grown), block.shape[1]), self.matrix.dtype)
            buffer[:size] = self.matrix
            store = RowStore(buffer, size)
        store.buffer[size : size + count] = block  # rows no snapshot can see yet
        store.used = size + count
        new_keys = PackedStrings(keys)
        hashes = np.fromiter(map(hash, new_keys), dtype=np.int64, count=count)
        order = np.argsort(hashes, kind="stable")
        hashes = hashes[order]
        # Merged into the sorted index in O(C) (np.insert), not re-sorted.
        at = np.searchsorted(self.key_hashes, hashes, side="right")
        return dataclasses.replace(
            self,
            matrix=store.buffer[: size + count],
            names=PackedStrings.join([self.names, PackedStrings(names)]),
            keys=PackedStrings.join([self.keys, new_keys]),
            ids=PackedStrings.join([self.ids, PackedStrings(ids)]),
            key_hashes=np.insert(self.key_hashes, at, hashes),
            key_rows=np.insert(self.key_rows, at, np.arange(size, size + count)[order]),
            store=store,
        )

    def vector(self, row: int) -> np.ndarray:
        return np.asarray(self.matrix[row], dtype=np.float32)

    def logits(self, features: np.ndarray) -> np.ndarray:
        """Cosines (B, C) of `features` (B, D) float32 against every class."""
        return class_logits(self.matrix, features)

    def on_device(self, device: torch.device) -> torch.Tensor:
        """The matrix on `device`, uploaded once per snapshot (a class change makes a new one)."""
        key = str(device)
        weights = self._on_device.get(key)
        if weights is None:
            weights = torch.from_numpy(self.matrix).to(device)
            self._on_device[key] = weights  # a racing second upload is wasted, not wrong
        return weights


def class_logits(matrix: np.ndarray, features: np.ndarray) -> np.ndarray:
    """`features @ matrix.T` as float32, one product for the whole batch.

    torch rather than numpy: the product runs on the model-runner thread, with torch's own
    thread pool, so it never competes with the encoder for cores the way a second (BLAS) pool
    would. A float16 matrix is multiplied in float16: the product is memory-bound, and reading
    half the bytes makes it about twice as fast on CPU (measured in benchmarks/perf.py).
    """
    feats = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32))
    weights = torch.from_numpy(matrix)
    if weights.dtype != torch.float32:
        return (feats.to(weights.dtype) @ weights.T).float().numpy()
    return (feats @ weights.T).numpy()


def top_k_softmax(logits: np.ndarray, scale: float, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k rows of softmax(scale * logits) over all C classes, best first.

    Returns (indices, probabilities), each (k',) with k' = min(k, C). The softmax needs every
    logit for its denominator (O(C)), but only k entries are ever sorted: argpartition picks
    them in O(C) instead of sorting all C. Ties are broken by the lower index, as a stable
    sort would. float32 over C, float64 for the sum and the k results: at 10^5 classes the
    float64 copy of every logit cost more than the product's own top-k.
    """
    count = logits.shape[0]
    k = min(k, count)
    if k <= 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float64)
    scaled = np.multiply(logits, np.float32(scale), dtype=np.float32)
    peak = float(scaled.max())
    total = float(np.exp(scaled - np.float32(peak)).sum(dtype=np.float64))
    if count > _PARTITION_FROM and k < count:
        candidates = np.argpartition(scaled, count - k)[count - k :]
    else:
        candidates = np.arange(count)
    order = np.lexsort((candidates, -scaled[candidates]))[:k]
    best = candidates[order]
    return best.astype(np.int64), np.exp(scaled[best].astype(np.float64) - peak) / total


def top_k_softmax_on_device(
    weights: torch.Tensor, features: np.ndarray, scale: float, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """`top_k_softmax` for a batch, computed where `weights` lives (an accelerator).

    Why: next to a GPU encode of a few ms, reading 10^5 classes on the CPU and copying B x C
    logits back would dominate; on the device the product, the log-sum-exp over all classes and
    the top-k run there, and only (B, k) values come back. Returns (indices, probabilities),
    each (B, k') with k' = min(k, C), best first, ties broken by the lower index as on the CPU.
    """
    count = weights.shape[0]
    k = min(k, count)
    batch = features.shape[0]
    if k <= 0:
        return np.zeros((batch, 0), dtype=np.int64), np.zeros((batch, 0), dtype=np.float64)
    feats = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32))
    feats = feats.to(weights.device, weights.dtype)
    scaled = (feats @ weights.T).float() * scale
    log_total = torch.logsumexp(scaled, dim=1, keepdim=True)
    values, indices = torch.topk(scaled, k, dim=1)
    probabilities = torch.exp(values - log_total).double().cpu().numpy()
    indices_np = indices.cpu().numpy().astype(np.int64)
    values_np = values.cpu().numpy()
    for row in range(batch):  # topk's order among equal values is unspecified
        order = np.lexsort((indices_np[row], -values_np[row]))
        indices_np[row] = indices_np[row][order]
        probabilities[row] = probabilities[row][order]
    return indices_np, probabilities


def empty_matrix(model_id: str, dim: int, dtype: str = "float32") -> ClassMatrix:
    return _assemble(-1, model_id, np.zeros((0, dim), dtype=_DTYPES[dtype]), [], [], [])


def _assemble(
    generation: int,
    model_id: str,
    matrix: np.ndarray,
    names: list[PackedStrings] | list[str],
    keys: list[PackedStrings] | list[str],
    ids: list[PackedStrings] | list[str],
    ready_through: datetime | None = None,
) -> ClassMatrix:
    def pack(values: list[PackedStrings] | list[str]) -> PackedStrings:
        if values and isinstance(values[0], PackedStrings):
            return PackedStrings.join(values)  # type: ignore[arg-type]
        return PackedStrings(values)  # type: ignore[arg-type]

    packed_keys = pack(keys)
    hashes = np.fromiter(map(hash, packed_keys), dtype=np.int64, count=len(packed_keys))
    order = np.argsort(hashes, kind="stable")
    return ClassMatrix(
        generation=generation,
        model_id=model_id,
        matrix=matrix,
        names=pack(names),
        keys=packed_keys,
        ids=pack(ids),
        key_hashes=hashes[order],
        key_rows=order.astype(np.int64),
        ready_through=ready_through,
    )


def build_matrix(session: Session, model_id: str, dim: int, dtype: str = "float32") -> ClassMatrix:
    # Read the generation first: a change landing during the scan makes the next check rebuild.
    generation = read_generation(session)
    cls = PersonalizedClass
    ready = (cls.model_id == model_id, cls.status == Status.ready)
    expected = int(session.scalar(select(func.count()).select_from(cls).where(*ready)) or 0)
    # Preallocated and filled in place, streamed in chunks: the peak is the matrix itself plus
    # one chunk of rows, not a Python list of 10^5 arrays.
    # Spare rows from the start, so the first appends do not copy the matrix.
    matrix = np.empty((expected + _spare_rows(expected), dim), dtype=_DTYPES[dtype])
    names: list[PackedStrings] = []
    keys: list[PackedStrings] = []
    ids: list[PackedStrings] = []
    filled = skipped = 0
    result = session.execute(
        select(cls.id, cls.name, cls.name_key, cls.embedding, cls.updated_at)
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
            matrix = np.resize(matrix, (grown + _spare_rows(grown), dim))
        block = np.frombuffer(b"".join(r.embedding for r in good), dtype=np.float32)
        matrix[filled : filled + len(good)] = block.reshape(len(good), dim)
        filled += len(good)
        names.append(PackedStrings([r.name for r in good]))
        keys.append(PackedStrings([r.name_key for r in good]))
        ids.append(PackedStrings([r.id for r in good]))
    if skipped:
        log.warning("%d ready classes have a wrong dimension; skipped", skipped)
    # A skipped row makes counts disagree with the matrix: such a snapshot is never extended.
    through = ready_through if not skipped else None
    snap = _assemble(generation, model_id, matrix[:filled], names, keys, ids, through)
    return dataclasses.replace(snap, store=RowStore(matrix, filled))


def update_matrix(session: Session, snap: ClassMatrix, dim: int) -> ClassMatrix | None:
    """`snap` less the classes that left and plus the ones that became ready since it was
    built, or None when that cannot be proven to account for every ready row: then the caller
    rebuilds in full.

    Why: a full rebuild at 10^5 classes is seconds of per-row Python holding the GIL, which
    stalls requests; an update touches only the changed rows plus one C-speed pass over the
    matrix when rows leave.
    """
    if snap.ready_through is None:
        return None
    generation = read_generation(session)
    cls = PersonalizedClass
    removed = session.execute(
        select(ClassRemoval.class_id, ClassRemoval.name_key).where(
            ClassRemoval.model_id == snap.model_id, ClassRemoval.generation > snap.generation
        )
    ).all()
    # Read after the log: a prune that landed in between moves the floor, and is seen here.
    if read_removals_floor(session) > snap.generation:
        return None
    gone = sorted(
        {row for class_id, key in removed if (row := snap.index_of(key, class_id)) is not None}
    )
    ready = (cls.model_id == snap.model_id, cls.status == Status.ready)
    total = int(session.scalar(select(func.count()).select_from(cls).where(*ready)) or 0)
    rows = session.execute(
        select(cls.id, cls.name, cls.name_key, cls.embedding, cls.updated_at)
        .where(*ready, cls.updated_at > snap.ready_through)
        .order_by(cls.created_at, cls.id)
    ).all()
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
            [r.name_key for r in rows],
            [r.id for r in rows],
        )
        latest = max(r.updated_at for r in rows)
        updated = dataclasses.replace(updated, ready_through=max(snap.ready_through, latest))
    return dataclasses.replace(updated, generation=generation)


class ClassMatrixCache:
    def __init__(
        self,
        session_factory: sessionmaker[Session],
        refresh_seconds: float,
        dtype: str = "float32",
    ) -> None:
        if dtype not in _DTYPES:
            raise ValueError(f"class matrix dtype must be one of {sorted(_DTYPES)}, not {dtype!r}")
        self._factory = session_factory
        self._refresh_seconds = refresh_seconds
        self._dtype = dtype
        self._snapshot: ClassMatrix | None = None
        self._model: tuple[str, int] | None = None
        self._lock = threading.Lock()  # one rebuild at a time
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
                snap = None
                if not force and current is not None and current.model_id == model_id:
                    snap = update_matrix(session, current, dim)
                if snap is None:
                    snap = build_matrix(session, model_id, dim, self._dtype)
            self._snapshot = snap
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
