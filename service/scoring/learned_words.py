"""The learned words (token embeddings) this process has read, for `{name}` in /v1/embeddings
while the database cannot be read.

The class matrix holds each class's text feature, not its token embedding (that would double
its memory), so a word is answered from here during an outage only if this process read it
before and the class is still in its class matrix (ready, same id, as of the last sync).
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import torch

from service.scoring.matrix import ClassMatrix, scoped_key


class LearnedWords:
    def __init__(self, capacity: int = 4096) -> None:
        self._items: OrderedDict[tuple[str, str], tuple[str, torch.Tensor]] = OrderedDict()
        self._capacity = capacity
        self._lock = threading.Lock()

    def remember(
        self, model_id: str, tenant: str, key: str, class_id: str, word: torch.Tensor
    ) -> None:
        with self._lock:
            self._items[(model_id, scoped_key(tenant, key))] = (class_id, word)
            self._items.move_to_end((model_id, scoped_key(tenant, key)))
            while len(self._items) > self._capacity:
                self._items.popitem(last=False)

    def recall(
        self, snapshot: ClassMatrix | None, tenant: str, keys: list[str]
    ) -> dict[str, torch.Tensor] | None:
        """Every one of `keys` as remembered, or None if any is unknown here or no longer in
        `snapshot` (this process's class matrix)."""
        if snapshot is None:
            return None
        found = {}
        with self._lock:
            for key in keys:
                scoped = scoped_key(tenant, key)
                entry = self._items.get((snapshot.model_id, scoped))
                if entry is None or snapshot.index_of(scoped, entry[0]) is None:
                    return None
                found[key] = entry[1]
        return found
