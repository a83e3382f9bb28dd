"""The class matrix snapshot: lookup by name key, packed strings, memory."""

from __future__ import annotations

import numpy as np

from service.scoring.matrix import PackedStrings
from tests.helpers.class_vectors import random_matrix, snapshot_of


def test_snapshot_lookup_names_ids_and_memory() -> None:
    matrix = random_matrix(10_000, 32)
    snapshot = snapshot_of(matrix)
    assert snapshot.size == 10_000
    assert snapshot.names[1234] == "class 1234" and snapshot.ids[1234] == "id-1234"
    assert snapshot.index_of("class 9999") == 9999
    assert snapshot.index_of("class 10000") is None
    np.testing.assert_array_equal(snapshot.vector(42), matrix[42])
    # Compact: the matrix plus the string bytes and 40 bytes of index per class.
    assert snapshot.nbytes < matrix.nbytes + 100 * snapshot.size


def test_packed_strings_take_keeps_the_selected_in_order() -> None:
    values = ["a", "", "héllo", "x" * 300, "日本", "z"]
    keep = np.array([True, True, False, True, True, False])
    taken = PackedStrings(values).take(keep)
    assert list(taken) == ["a", "", "x" * 300, "日本"]
    assert list(PackedStrings(values).take(np.zeros(6, dtype=bool))) == []
