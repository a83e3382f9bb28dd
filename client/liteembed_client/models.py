"""Typed results of the service's JSON responses."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

ClassStatus = Literal["queued", "training", "ready", "failed"]


class _Result(BaseModel):
    # Fields the service adds later are ignored, so an older client keeps working.
    model_config = ConfigDict(frozen=True, extra="ignore", protected_namespaces=())


class Impact(_Result):
    """`taken` of the `of` exemplars of another class were predicted as this one when it became
    ready (`direction` "took"), or of this class's as the other ("taken_by"); `relearned`: that
    class was learned again beside it (`remaining`: still taken)."""

    class_id: str
    name: str
    direction: str = "took"
    taken: int
    of: int
    relearned: bool = False
    remaining: int | None = None


class ClassInfo(_Result):
    """A registered class and its training job."""

    id: str
    name: str
    tenant: str = "default"
    model: str
    status: ClassStatus
    progress: float
    attempts: int
    error: str | None = None
    hints: list[str] = []
    confusers: list[str] = []
    dim: int | None = None
    created_at: datetime
    updated_at: datetime
    # Raw cosine at or above which a prediction of this class is accepted (None until ready).
    threshold: float | None = None
    # The tenant's classes whose exemplars this class took when it became ready.
    impact: list[Impact] = []
    diagnostics: dict[str, Any] | None = None

    @property
    def finished(self) -> bool:
        """Ready or failed: nothing will change any more."""
        return self.status in ("ready", "failed")


class ClassPage(_Result):
    """One page of `GET /v1/classes`; `total` counts every match."""

    items: list[ClassInfo]
    total: int


class Prediction(_Result):
    label: str
    # Softmax probability among the labels scored: how this label ranks, not whether it matches.
    score: float
    # The registered class behind the label; None for a plain word.
    class_id: str | None = None
    # Raw cosine of the image and the label, and whether it clears the label's threshold.
    similarity: float | None = None
    accepted: bool | None = None
    # For a registered class: the known concept (a word of the model's reference bank) nearer to
    # the image than the class, which is then not accepted; None otherwise.
    nearer_known: str | None = None


class Classification(_Result):
    """Predictions for one image, best first."""

    model: str
    predictions: list[Prediction]

    @property
    def top(self) -> Prediction | None:
        return self.predictions[0] if self.predictions else None


class Embedding(_Result):
    """A ready class's learned word: its CLIP text feature and its token embedding."""

    model: str
    dim: int
    templates: list[str]
    text_feature: list[float]
    token_embedding: list[float]
    threshold: float | None = None


class Embeddings(_Result):
    """`POST /v1/embeddings`: L2-normalised features of the images and texts, in the order sent."""

    model: str
    dim: int
    images: list[list[float]]
    texts: list[list[float]]


class Vocabulary(_Result):
    """`GET /v1/vocabulary`: words the model knows (usable as hints), sorted."""

    model: str
    words: list[str]
    total: int
