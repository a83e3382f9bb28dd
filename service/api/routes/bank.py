"""The reference bank grown from a tenant's /v1/classify traffic: what it holds, per word, and
deleting it. Client keys see and delete their own tenant's; admin keys any tenant's, or all."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from service.api.deps import ClientDep, SessionDep, SettingsDep, TenantScopeDep
from service.api.errors import responses
from service.api.routes.classes import MAX_OFFSET
from service.crud.bank import count_features, delete_features

router = APIRouter(prefix="/v1/bank", tags=["bank"], dependencies=[ClientDep])


class BankWord(BaseModel):
    model: str
    tenant: str
    word: str = Field(description="the vocabulary word the features are labelled with")
    features: int = Field(description="image features kept (at most the per-word bound)")


class BankContents(BaseModel):
    recording: bool | None = Field(
        description="whether the tenant's /v1/classify traffic is recorded "
        "(LITEEMBED_BANK_FROM_TRAFFIC_TENANTS); null for an admin listing every tenant"
    )
    per_word: int = Field(description="features kept per model, tenant and word (the newest)")
    items: list[BankWord]
    total: int = Field(description="(model, tenant, word) rows in all, over every page")


class BankDeleted(BaseModel):
    deleted: int = Field(description="image features removed")


@router.get(
    "",
    response_model=BankContents,
    summary="Image features recorded from /v1/classify traffic, counted per word",
    responses=responses(401, 403, 422, 503),
)
def list_bank(
    session: SessionDep,
    settings: SettingsDep,
    scope: TenantScopeDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> BankContents:
    counts, total = count_features(session=session, tenant=scope, limit=limit, offset=offset)
    return BankContents(
        recording=None if scope is None else settings.bank_records(scope),
        per_word=settings.bank_per_word,
        items=[
            BankWord(model=c.model_id, tenant=c.tenant, word=c.word, features=c.features)
            for c in counts
        ],
        total=total,
    )


@router.delete(
    "",
    response_model=BankDeleted,
    summary="Delete the image features recorded from /v1/classify traffic (a client key: its "
    "own tenant's; an admin key: ?tenant='s, or every tenant's)",
    responses=responses(401, 403, 422, 503),
)
def delete_bank(session: SessionDep, scope: TenantScopeDep) -> BankDeleted:
    deleted = delete_features(session=session, tenant=scope)
    session.commit()
    return BankDeleted(deleted=deleted)
