"""The class matrix: one immutable snapshot of the ready classes of one model.

A contiguous (C x D) matrix (float32, or float16 to halve the memory), rows L2-normalised, plus
the classes' names, keys (tenant and name key) and ids packed into a few flat arrays (no Python
object per class, so 10^5 classes cost the matrix plus a few MB) and a sorted hash index for
lookup by key. Every tenant's classes share the one matrix: a tenant is a set of its rows.

Each row also has the class's acceptance threshold (raw cosine; NaN where the class has none, and
the model's plain-word threshold applies).

Snapshots change only by making new ones: `with_rows` appends classes (into spare rows of a shared
buffer when there are any) and `without` drops classes, each at the cost of the changed rows plus
at most one C-speed pass over the matrix; a class whose row changed (re-learned) is dropped and
appended again. `service/scoring/sync.py` keeps a snapshot in step with
the database; `service/scoring/scorer.py` scores image features against one.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from datetime import datetime

import numpy as np

# The matrix element types a snapshot may hold (`classifier_dtype`).
MATRIX_DTYPES = {"float32": np.float32, "float16": np.float16}
# Spare rows reserved when an append has to grow the matrix: appends then write into the spare
# rows instead of copying the whole matrix each time (the copy of 200 MB was what stalled).
_SPARE_FRACTION = 8  # one spare row per 8 classes, at least _SPARE_MIN
_SPARE_MIN = 256
# Up to this many rows leaving at once, the kept rows are copied run by run.
_SLICE_COPY_MAX = 1024


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


# Tenant ids never contain it (service/models.py TENANT_PATTERN), so the first one splits.
TENANT_SEPARATOR = "/"
_NO_ROWS = np.zeros(0, dtype=np.int64)


def scoped_key(tenant: str, name_key: str) -> str:
    """A class's key in the matrix: names are unique per tenant, so the lookup is by both."""
    return f"{tenant}{TENANT_SEPARATOR}{name_key}"


def spare_rows(count: int) -> int:
    """Spare rows to reserve for a matrix of `count` classes."""
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
    """One snapshot; never changed once made (a change makes a new snapshot)."""

    generation: int
    model_id: str
    matrix: np.ndarray  # (C, D) float32 or float16, C-contiguous, rows L2-normalised
    names: PackedStrings
    keys: PackedStrings  # `scoped_key` of each class: its tenant and name_key
    ids: PackedStrings
    # name_key lookup without a dict: sorted 64-bit hashes and the row each came from.
    key_hashes: np.ndarray
    key_rows: np.ndarray
    # Latest `updated_at` among the rows in the matrix: newer ready rows can be appended.
    ready_through: datetime | None = None
    # The buffer `matrix` is a view of, when it has spare rows for appends.
    store: RowStore | None = None
    # (C,) float64 acceptance threshold of each row, NaN where the class has none (None: no row
    # has one).
    thresholds: np.ndarray | None = None

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
            + (self.thresholds.nbytes if self.thresholds is not None else 0)
        )

    def thresholds_of(self, rows: np.ndarray) -> np.ndarray:
        """The acceptance thresholds of `rows` (float64, NaN where a class has none)."""
        if self.thresholds is None:
            return np.full(len(rows), np.nan)
        return self.thresholds[np.asarray(rows, dtype=np.int64)].astype(np.float64)

    @functools.cached_property
    def _rows_by_tenant(self) -> dict[str, np.ndarray]:
        # Once per snapshot: a pass over the keys (~50 ms at 10^5 classes), which the sync pays
        # before it publishes the snapshot (`index_tenants`), not the model thread on first use.
        rows: dict[str, list[int]] = {}
        for row, key in enumerate(self.keys):
            rows.setdefault(key.partition(TENANT_SEPARATOR)[0], []).append(row)
        return {tenant: np.asarray(found, dtype=np.int64) for tenant, found in rows.items()}

    def index_tenants(self) -> None:
        """Build the tenant index now (it is built once per snapshot, on first use otherwise)."""
        _ = self._rows_by_tenant

    def tenant_rows(self, tenant: str) -> np.ndarray:
        """The rows of `tenant`'s classes, ascending (empty when it has none)."""
        return self._rows_by_tenant.get(tenant, _NO_ROWS)

    def index_of(self, key: str, class_id: str | None = None) -> int | None:
        """Row of the class whose scoped key is `key` (and whose id is `class_id`, if given)."""
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
        buffer = np.empty((kept + spare_rows(kept), self.matrix.shape[1]), self.matrix.dtype)
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
            thresholds=self.thresholds[keep] if self.thresholds is not None else None,
        )

    def with_rows(
        self,
        block: np.ndarray,
        names: list[str],
        keys: list[str],
        ids: list[str],
        thresholds: list[float | None] | None = None,
    ) -> ClassMatrix:
        """This snapshot plus the rows of `block` (float32, L2-normalised) at the end, with
        their acceptance thresholds (None: they have none).

        Written into spare rows when this snapshot is the tip of its store, so the cost is the
        new rows, not the matrix; otherwise (or when full) copied once into a bigger buffer.
        """
        size, count = self.size, block.shape[0]
        store = self.store
        if store is None or store.used != size or store.buffer.shape[0] < size + count:
            grown = size + count
            buffer = np.empty((grown + spare_rows(grown), block.shape[1]), self.matrix.dtype)
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
            thresholds=np.concatenate(
                [
                    self.thresholds if self.thresholds is not None else np.full(size, np.nan),
                    threshold_array(thresholds, count),
                ]
            ),
        )

    def vector(self, row: int) -> np.ndarray:
        return np.asarray(self.matrix[row], dtype=np.float32)


def assemble(
    generation: int,
    model_id: str,
    matrix: np.ndarray,
    names: list[PackedStrings] | list[str],
    keys: list[PackedStrings] | list[str],
    ids: list[PackedStrings] | list[str],
    ready_through: datetime | None = None,
    thresholds: list[float | None] | np.ndarray | None = None,
) -> ClassMatrix:
    """A snapshot of `matrix` (its rows in order) with its names, name keys, ids (given as
    lists of strings or as packed chunks to join) and acceptance thresholds (None: none)."""

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
        thresholds=threshold_array(thresholds, int(matrix.shape[0])),
    )


def threshold_array(thresholds: list[float | None] | np.ndarray | None, count: int) -> np.ndarray:
    """(count,) float64 thresholds, NaN for a class without one."""
    if thresholds is None:
        return np.full(count, np.nan)
    if isinstance(thresholds, np.ndarray):
        values = thresholds.astype(np.float64)
    else:
        values = np.array([np.nan if t is None else t for t in thresholds], dtype=np.float64)
    if values.shape != (count,):
        raise ValueError(f"{values.shape[0]} thresholds for {count} rows")
    return values
