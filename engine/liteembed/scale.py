"""The size of real words in a model's token-embedding space, so that a step size and a norm
bound mean the same on any model (a 128-wide toy or a 512-wide ViT-B/32 text tower)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from liteembed.backend import ClipBackend
from liteembed.config import OptimizationConfig
from liteembed.vocab import Vocabulary


@dataclass(frozen=True)
class WordScale:
    median_norm: float  # median norm of the vocabulary words' (mean) token embeddings
    max_norm: float  # the largest of them
    token_dim: int

    @property
    def coordinate(self) -> float:
        """A typical coordinate of a word's embedding: median norm / sqrt(width)."""
        return self.median_norm / math.sqrt(self.token_dim)

    def lr(self, config: OptimizationConfig) -> float:
        return config.lr * self.coordinate if config.lr_scale == "token" else config.lr

    def norm_cap(self, config: OptimizationConfig) -> float | None:
        return None if config.norm_bound is None else config.norm_bound * self.max_norm


# Per (model id, vocabulary size): one pass over ~33k words costs a fraction of a second.
_SCALES: dict[tuple[str, int], WordScale] = {}


def word_scale(backend: ClipBackend, vocabulary: Vocabulary) -> WordScale:
    key = (vocabulary.model_id, len(vocabulary.words))
    if key not in _SCALES:
        table = backend.token_table.detach().float()
        with torch.no_grad():
            norms = torch.stack(
                [
                    table[torch.tensor(ids, device=table.device)].mean(dim=0).norm()
                    for ids in vocabulary.word_token_ids
                    if ids
                ]
            )
        _SCALES[key] = WordScale(
            median_norm=float(norms.median().item()),
            max_norm=float(norms.max().item()),
            token_dim=int(table.shape[1]),
        )
    return _SCALES[key]


__all__ = ["WordScale", "word_scale"]
