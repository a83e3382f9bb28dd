"""The text-only alternative to a reference bank: stand-in image features made from words.

Where no images of the neighbouring words exist, a stand-in can be drawn from their text features
as C3 (Zhang et al., ICLR 2024) models the modality gap: an image feature is its text feature plus
a constant gap vector plus noise. Built here from what a text-only deployment has at training
time, the new classes' own support images: the gap is the mean of the supports minus the mean
feature of each support class's nearest vocabulary word, the noise per dimension the supports'
spread around their class means. Every vocabulary word gets `per_word` stand-ins.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from liteembed import ReferenceBank, Vocabulary


def text_standin_bank(
    vocabulary: Vocabulary,
    supports: Sequence[torch.Tensor],
    *,
    model_id: str,
    per_word: int = 16,
    seed: int = 0,
) -> ReferenceBank:
    """Stand-ins for every vocabulary word from the classes' support features ((K, E) each)."""
    words = vocabulary.word_features.float().cpu()
    means = torch.stack([F.normalize(s.float().mean(dim=0), dim=-1) for s in supports])
    nearest = words[(means @ words.T).argmax(dim=1)]
    gap = (means - nearest).mean(dim=0)
    residuals = torch.cat([s.float() - s.float().mean(dim=0) for s in supports])
    spread = residuals.std(dim=0) if len(residuals) > 1 else torch.zeros_like(gap)
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(len(words), per_word, words.shape[1], generator=generator) * spread
    features = F.normalize(words[:, None, :] + gap + noise, dim=-1).reshape(-1, words.shape[1])
    labels = torch.arange(len(words)).repeat_interleave(per_word)
    return ReferenceBank(
        model_id=model_id, words=list(vocabulary.words), features=features, labels=labels
    )


__all__ = ["text_standin_bank"]
