"""Response bodies."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import numpy as np
from pydantic import BaseModel

from service.models import PersonalizedClass, as_utc


class ClassOut(BaseModel):
    id: str
    name: str
    model: str
    status: str
    progress: float
    attempts: int
    error: str | None
    hints: list[str]
    confusers: list[str]
    dim: int | None
    created_at: datetime
    updated_at: datetime
    diagnostics: dict[str, Any] | None = None

    @classmethod
    def of(cls, row: PersonalizedClass, *, diagnostics: bool = True) -> ClassOut:
        return cls(
            id=row.id,
            name=row.name,
            model=row.model_id,
            status=row.status,
            progress=round(float(row.progress or 0.0), 4),
            attempts=row.attempts,
            error=row.error,
            hints=list(row.hints or []),
            confusers=list(row.confusers or []),
            dim=row.dim,
            created_at=as_utc(row.created_at),  # type: ignore[arg-type]
            updated_at=as_utc(row.updated_at),  # type: ignore[arg-type]
            diagnostics=row.diagnostics if diagnostics else None,
        )


class ClassList(BaseModel):
    items: list[ClassOut]
    total: int


class EmbeddingOut(BaseModel):
    model: str
    dim: int
    templates: list[str]
    text_feature: list[float]
    token_embedding: list[float]

    @classmethod
    def of(cls, row: PersonalizedClass) -> EmbeddingOut:
        assert row.embedding is not None and row.token_embedding is not None
        return cls(
            model=row.model_id,
            dim=int(row.dim or 0),
            templates=list(row.templates or []),
            text_feature=np.frombuffer(row.embedding, dtype=np.float32).tolist(),
            token_embedding=np.frombuffer(row.token_embedding, dtype=np.float32).tolist(),
        )


class Prediction(BaseModel):
    label: str
    score: float
    class_id: str | None


class ClassifyOut(BaseModel):
    model: str
    predictions: list[Prediction]
