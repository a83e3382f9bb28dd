"""What a caller hands the engine (a class to learn) and what it gets back (the learned class,
progress events while it learns)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image

# An image as the engine accepts it: a PIL image, or the encoded bytes of one.
ImageData = Image.Image | bytes


@dataclass(frozen=True)
class ClassRequest:
    name: str
    images: Sequence[ImageData]
    hints: Sequence[str] = ()
    confusers: Sequence[str] = ()
    # Names whose words are never mined from the vocabulary for this class (as negatives or
    # anchor words), e.g. the other classes of an evaluation that must not see them.
    not_negatives: Sequence[str] = ()
    # Images that are not this class ("not this": a look-alike the user has photos of). The word
    # is learned not to win them, and they lower its acceptance threshold's false accepts.
    negative_images: Sequence[ImageData] = ()


@dataclass(frozen=True)
class ProtectedClass:
    """A class already in use whose images a new word must not take: a registered class of the
    same deployment, with its current text feature and the image features of its exemplars."""

    name: str
    feature: torch.Tensor  # (E,) its text feature
    image_features: torch.Tensor  # (n, E) its exemplars' image features


@dataclass(frozen=True)
class ProgressEvent:
    step: int
    total: int
    loss: float
    exemplar_accuracy: float


ProgressCallback = Callable[[ProgressEvent], bool | None]


@dataclass
class LearnedClass:
    name: str
    model_id: str
    templates: list[str]
    token_embedding: torch.Tensor  # (token_dim,)
    text_feature: torch.Tensor  # (embed_dim,), normalised mean over templates
    # Raw cosine between an image feature and `text_feature` at or above which an image is
    # taken to be this class (below: none of the known classes); see liteembed.threshold.
    threshold: float | None = None
    # (K, embed_dim) image features of the class's own images, un-augmented: what a later class
    # is protected against (`ProtectedClass.image_features`) without encoding them again.
    exemplar_features: torch.Tensor | None = None
    diagnostics: dict[str, Any] = field(default_factory=dict)


__all__ = [
    "ClassRequest",
    "ImageData",
    "LearnedClass",
    "ProgressCallback",
    "ProgressEvent",
    "ProtectedClass",
]
