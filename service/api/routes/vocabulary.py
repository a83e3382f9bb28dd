"""`GET /v1/vocabulary`: the words the model knows, which are what `hints` may name."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field

from service.api.deps import ClientDep, RuntimeDep
from service.api.errors import responses
from service.api.schemas import VocabularyOut

router = APIRouter(prefix="/v1/vocabulary", tags=["classes"])


class VocabularyQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prefix: str = Field("", max_length=64, description="only words starting with this (any case)")
    limit: int = Field(100, ge=1, le=10_000)


@router.get(
    "",
    response_model=VocabularyOut,
    dependencies=[ClientDep],
    summary="Words the model knows (usable as hints), sorted",
    responses=responses(401, 403, 422, 503),
)
async def vocabulary(
    runtime: RuntimeDep, query: Annotated[VocabularyQuery, Query()]
) -> VocabularyOut:
    prefix = query.prefix.casefold()
    # Hints are checked case-insensitively against these (`Runtime.vocabulary_words`).
    matching = sorted(w for w in runtime.vocabulary_words if w.startswith(prefix))
    return VocabularyOut(model=runtime.model_id, words=matching[: query.limit], total=len(matching))
