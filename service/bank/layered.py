"""The bank a train job hands the engine: the model's own (operator's or shipped) with the
tenant's recorded traffic features behind it, word by word.

Read lazily, one word at a time, when the engine asks for a mined word's images: a tenant may
have recorded features of thousands of words, and a job needs those of its classes' few nearest
ones, so memory holds only what was asked for (at most `per_word` rows a word).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from sqlalchemy.orm import Session, sessionmaker

from liteembed.bank import ReferenceBank
from service.crud.bank import has_features, word_features

# A word's recorded features, newest first: (word, limit) -> (n <= limit, E) float32.
RecordedLookup = Callable[[str, int], np.ndarray]


@dataclass(frozen=True)
class LayeredBank(ReferenceBank):
    """`images_of(word)`: the base bank's images of the word first, then the recorded ones,
    `limit` in all. `words`, `features` and `labels` stay the base bank's (what the plain-word
    threshold was computed from); only `images_of` and `in` see the recorded ones."""

    recorded: RecordedLookup | None = None
    per_word: int = 16
    _read: dict[tuple[str, int], torch.Tensor] = field(
        default_factory=dict, compare=False, repr=False
    )
    _lock: threading.Lock = field(default_factory=threading.Lock, compare=False, repr=False)

    def images_of(self, word: str, limit: int | None = None) -> torch.Tensor:
        base = super().images_of(word, limit)
        wanted = self.per_word if limit is None else min(limit - len(base), self.per_word)
        if self.recorded is None or wanted <= 0:
            return base
        extra = self._recorded_of(word, wanted)
        return torch.cat([base, extra.to(base.dtype)]) if len(extra) else base

    def __contains__(self, word: object) -> bool:
        if not isinstance(word, str):
            return False
        return super().__contains__(word) or len(self._recorded_of(word, 1)) > 0

    def _recorded_of(self, word: str, limit: int) -> torch.Tensor:
        with self._lock:
            found = self._read.get((word, limit))
            if found is None:
                assert self.recorded is not None
                rows = torch.from_numpy(np.array(self.recorded(word, limit), dtype=np.float32))
                found = F.normalize(rows, dim=-1) if len(rows) else rows
                self._read[(word, limit)] = found
            return found


def tenant_bank(
    base: ReferenceBank | None,
    *,
    sessions: sessionmaker[Session],
    model_id: str,
    dim: int,
    tenants: Iterable[str],
    per_word: int,
) -> ReferenceBank | None:
    """`base` with `tenants`' recorded features of `model_id` behind it; `base` itself when
    they have recorded none."""
    tenants = sorted(set(tenants))
    with sessions() as session:
        if not tenants or not has_features(session=session, model_id=model_id, tenants=tenants):
            return base

    def lookup(word: str, limit: int) -> np.ndarray:
        with sessions() as session:
            return word_features(
                session=session,
                model_id=model_id,
                tenants=tenants,
                word=word,
                dim=dim,
                limit=limit,
            )

    return layered(base, model_id=model_id, dim=dim, recorded=lookup, per_word=per_word)


def layered(
    base: ReferenceBank | None,
    *,
    model_id: str,
    dim: int,
    recorded: RecordedLookup,
    per_word: int,
) -> LayeredBank:
    """`base` (None: an empty bank) with `recorded` behind it."""
    if base is None:
        base = ReferenceBank(
            model_id=model_id,
            words=[],
            features=torch.zeros(0, dim),
            labels=torch.zeros(0, dtype=torch.long),
        )
    return LayeredBank(
        model_id=base.model_id,
        words=base.words,
        features=base.features,
        labels=base.labels,
        word_threshold=base.word_threshold,
        recorded=recorded,
        per_word=per_word,
    )
