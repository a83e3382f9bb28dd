"""Every read and write of the traffic bank's rows (`BankFeature`): record with the per-word
bound, count, look up one word, delete."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from service.models import BankFeature, utcnow


@dataclass(frozen=True)
class Observation:
    """One image a confident plain-word answer labelled: what the recorder writes."""

    model_id: str
    tenant: str
    word: str
    feature: bytes  # (dim,) float32, L2-normalised
    dim: int


@dataclass(frozen=True)
class WordCount:
    model_id: str
    tenant: str
    word: str
    features: int


def record_features(
    *, session: Session, observations: Sequence[Observation], per_word: int
) -> None:
    """Add `observations`, then keep only the newest `per_word` rows of each (model, tenant,
    word) they touched."""
    now = utcnow()
    session.add_all(
        BankFeature(
            model_id=one.model_id,
            tenant=one.tenant,
            word=one.word,
            feature=one.feature,
            dim=one.dim,
            recorded_at=now,
        )
        for one in observations
    )
    session.flush()
    for model_id, tenant, word in {(o.model_id, o.tenant, o.word) for o in observations}:
        beyond = (
            select(BankFeature.id)
            .where(
                BankFeature.model_id == model_id,
                BankFeature.tenant == tenant,
                BankFeature.word == word,
            )
            .order_by(BankFeature.id.desc())
            .offset(per_word)
        )
        old = list(session.scalars(beyond))
        if old:
            session.execute(delete(BankFeature).where(BankFeature.id.in_(old)))


def count_features(
    *, session: Session, tenant: str | None, limit: int | None = None, offset: int = 0
) -> tuple[list[WordCount], int]:
    """Features per (model, tenant, word), of `tenant` (None: every tenant), in that order: the
    page from `offset` (at most `limit` rows), and how many such rows there are in all."""
    query = select(
        BankFeature.model_id, BankFeature.tenant, BankFeature.word, func.count()
    ).group_by(BankFeature.model_id, BankFeature.tenant, BankFeature.word)
    if tenant is not None:
        query = query.where(BankFeature.tenant == tenant)
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    page = query.order_by(BankFeature.model_id, BankFeature.tenant, BankFeature.word)
    rows = session.execute(page.limit(limit).offset(offset))
    return [WordCount(m, t, w, int(n)) for m, t, w, n in rows], int(total)


def delete_features(*, session: Session, tenant: str | None) -> int:
    """Remove the features of `tenant` (None: every tenant); how many were removed."""
    statement = delete(BankFeature)
    if tenant is not None:
        statement = statement.where(BankFeature.tenant == tenant)
    return int(session.execute(statement).rowcount)  # type: ignore[attr-defined]


def has_features(*, session: Session, model_id: str, tenants: Iterable[str]) -> bool:
    query = select(BankFeature.id).where(
        BankFeature.model_id == model_id, BankFeature.tenant.in_(list(tenants))
    )
    return session.scalar(query.limit(1)) is not None


def word_features(
    *, session: Session, model_id: str, tenants: Iterable[str], word: str, dim: int, limit: int
) -> np.ndarray:
    """(n, dim) float32 features of `word`, newest first, at most `limit` (rows of another
    width, from a model id reused for another checkpoint, are left out)."""
    query = (
        select(BankFeature.feature)
        .where(
            BankFeature.model_id == model_id,
            BankFeature.tenant.in_(list(tenants)),
            BankFeature.word == word,
            BankFeature.dim == dim,
        )
        .order_by(BankFeature.id.desc())
        .limit(limit)
    )
    blobs = list(session.scalars(query))
    if not blobs:
        return np.zeros((0, dim), dtype=np.float32)
    return np.stack([np.frombuffer(blob, dtype=np.float32) for blob in blobs])
