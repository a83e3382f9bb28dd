"""Issue, list and revoke API keys (admin keys only). A new key's secret is shown once."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Response, status
from pydantic import BaseModel, ConfigDict, Field, model_validator
from sqlalchemy import select

from service import keys
from service.api.deps import AdminDep, SessionDep, SettingsDep
from service.api.errors import responses
from service.api.uploads import error
from service.models import TENANT_PATTERN, ApiKey, as_utc

router = APIRouter(prefix="/v1/keys", tags=["keys"], dependencies=[AdminDep])


class KeyIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["client", "admin"] = "client"
    tenant: str | None = Field(
        None, pattern=TENANT_PATTERN, description="the tenant of a client key"
    )

    @model_validator(mode="after")
    def _tenant_matches_role(self) -> KeyIn:
        if self.role == "client" and self.tenant is None:
            raise ValueError("a client key needs a tenant")
        if self.role == "admin" and self.tenant is not None:
            raise ValueError("an admin key acts on every tenant; leave tenant out")
        return self


class KeyOut(BaseModel):
    id: str
    prefix: str
    role: str
    tenant: str | None
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None

    @classmethod
    def of(cls, row: ApiKey) -> KeyOut:
        return cls(
            id=row.id,
            prefix=row.prefix,
            role=row.role,
            tenant=row.tenant,
            created_at=as_utc(row.created_at),  # type: ignore[arg-type]
            last_used_at=as_utc(row.last_used_at),
            revoked_at=as_utc(row.revoked_at),
        )


class IssuedKeyOut(KeyOut):
    key: str = Field(description="the secret; shown only in this answer")


class KeyList(BaseModel):
    items: list[KeyOut]


class KeyFilter(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tenant: str | None = Field(None, pattern=TENANT_PATTERN)
    revoked: bool = Field(False, description="include revoked keys")


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=IssuedKeyOut,
    summary="Issue a key",
    responses=responses(400, 401, 403, 413, 422, 503),
)
def create_key(body: KeyIn, session: SessionDep, settings: SettingsDep) -> IssuedKeyOut:
    issued = keys.issue_key(
        session=session,
        tenant=body.tenant,
        role=body.role,
        hash_secret=keys.hash_secret(settings),
    )
    session.commit()
    return IssuedKeyOut(**KeyOut.of(issued.row).model_dump(), key=issued.secret)


@router.get(
    "", response_model=KeyList, summary="List keys", responses=responses(401, 403, 422, 503)
)
def list_keys(session: SessionDep, query: Annotated[KeyFilter, Query()]) -> KeyList:
    selected = select(ApiKey).order_by(ApiKey.created_at, ApiKey.id)
    if query.tenant is not None:
        selected = selected.where(ApiKey.tenant == query.tenant)
    if not query.revoked:
        selected = selected.where(ApiKey.revoked_at.is_(None))
    return KeyList(items=[KeyOut.of(row) for row in session.scalars(selected)])


@router.delete(
    "/{key_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Revoke a key (every API process refuses it within a second)",
    responses=responses(401, 403, 404, 503),
)
def revoke_key(session: SessionDep, key_id: str) -> Response:
    row = session.get(ApiKey, key_id)
    if row is None:
        raise error(404, f"no key with id {key_id}")
    keys.revoke_key(session=session, row=row)
    session.commit()
    return Response(status_code=status.HTTP_204_NO_CONTENT)
