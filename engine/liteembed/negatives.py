"""Which vocabulary words a class is learned against: the words nearest to its prototype, never
its own name's or hints' words."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from liteembed.vocab import Vocabulary, words_in


def excluded_words(name: str, hints: Sequence[str]) -> set[str]:
    """Words never mined as negatives of a class: its own name's and its hints' words."""
    return set(words_in(name)) | {w for h in hints for w in words_in(h)}


def rank_words(
    vocabulary: Vocabulary,
    word_features: torch.Tensor,
    prototype: torch.Tensor,
    excluded: set[str],
) -> torch.Tensor:
    """Indices of the allowed vocabulary words, most similar to `prototype` first."""
    similarity = word_features @ prototype
    allowed = torch.tensor(
        [w not in excluded for w in vocabulary.words], device=word_features.device
    )
    ranked = torch.argsort(torch.where(allowed, similarity, -math.inf), descending=True)
    return ranked[: int(allowed.sum().item())]


__all__ = ["excluded_words", "rank_words"]
