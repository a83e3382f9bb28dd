"""Which /v1/classify answers label an image well enough to keep its feature in the bank."""

from __future__ import annotations

from typing import Protocol

from service.api.schemas import Prediction


class KnowsWords(Protocol):
    def index(self, word: str) -> int | None: ...


def recorded_word(
    predictions: list[Prediction], vocabulary: KnowsWords, min_score: float
) -> str | None:
    """The vocabulary word an image is kept under, or None.

    Only the top answer counts, and only when it is a plain word of the model's vocabulary (the
    bank labels images by the words training mines; a registered class is no such word), its
    softmax score among the request's labels is at least `min_score` (no close second), and its
    similarity clears the plain-word threshold (`accepted`: the image is of something, not just
    nearer this label than the others)."""
    if not predictions:
        return None
    top = predictions[0]
    if top.class_id is not None or not top.accepted or top.score < min_score:
        return None
    # Exactly the vocabulary's spelling: the label's text feature is the one that was scored.
    return top.label if vocabulary.index(top.label) is not None else None
