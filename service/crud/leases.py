"""The writes of training: claim a class under a lease (and its companions for a batch),
heartbeat, store the result, fail, release, and the reconciler's re-sends. Every write after the
claim is conditional on the run's lease, so a run that lost its row writes nothing."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta
from typing import Any

import numpy as np
from sqlalchemy import and_, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from service.crud.webhooks import add_class_event
from service.db import session_scope
from service.models import (
    PersonalizedClass,
    Status,
    as_utc,
    bump_generation,
    utcnow,
)
from service.webhooks.events import CLASS_FAILED, CLASS_READY

log = logging.getLogger(__name__)

CRASH_REASON = "the worker stopped before finishing (crash, kill or time limit)"
# Longer error messages are cut: they go into a column and into API answers.
MAX_ERROR_CHARS = 2000


# --- the train job's writes ----------------------------------------------------------------------


def claim_class(
    *, session: Session, class_id: str, stale_after: timedelta, max_attempts: int
) -> str | None:
    """Take the row for a training run; returns the run's lease, or None when there is nothing
    to do (gone, finished, held by a live run, claimed concurrently) or the attempts are spent
    (the row is marked failed)."""
    row = session.get(PersonalizedClass, class_id)
    if row is None:
        log.info("class %s no longer exists; nothing to do", class_id)
        return None
    if row.status in (Status.ready, Status.failed):
        log.info("class %s is already %s; nothing to do", class_id, row.status)
        return None
    now = utcnow()
    heartbeat_at = as_utc(row.heartbeat_at)
    if (
        row.status == Status.training
        and heartbeat_at is not None
        and now - heartbeat_at < stale_after
    ):
        log.info("class %s is being trained by a live run; skipping", class_id)
        return None
    if row.attempts >= max_attempts:
        reason = row.error or CRASH_REASON
        row.status = Status.failed.value
        row.error = f"gave up after {row.attempts} attempts; last error: {reason}"
        row.lease = None
        log.warning("class %s: %s", class_id, row.error)
        session.flush()
        add_class_event(session=session, class_id=class_id, event=CLASS_FAILED)
        return None
    lease = str(uuid.uuid4())
    # Compare-and-set on what we just read, so two workers cannot both claim the row.
    claimed = session.execute(
        update(PersonalizedClass)
        .where(
            PersonalizedClass.id == class_id,
            PersonalizedClass.status == row.status,
            PersonalizedClass.attempts == row.attempts,
        )
        .values(**_claimed_values(lease, now))
        .execution_options(synchronize_session=False)
    ).rowcount  # type: ignore[attr-defined]
    if claimed != 1:
        log.info("class %s was claimed by another run", class_id)
        return None
    log.info("class %s: training (attempt %d)", class_id, row.attempts + 1)
    return lease


def claim_companions(
    *, sessions: sessionmaker[Session], class_id: str, limit: int, max_attempts: int
) -> Iterator[tuple[str, str]]:
    """Claim up to `limit` other queued rows of `class_id`'s model and tenant, oldest first, with
    the same compare-and-set as `claim_class` (a row another worker took is skipped). Classes
    trained together are each other's negatives, so tenants are never mixed in a batch.

    Yields (class id, lease) as each claim commits, so a caller that fails half-way still knows
    every row it holds."""
    cls = PersonalizedClass
    with session_scope(sessions) as session:
        owner = session.execute(select(cls.model_id, cls.tenant).where(cls.id == class_id)).first()
        if owner is None:
            return
        candidates = session.execute(
            select(cls.id, cls.attempts)
            .where(
                cls.model_id == owner.model_id,
                cls.tenant == owner.tenant,
                cls.status == Status.queued,
                cls.attempts < max_attempts,
                cls.id != class_id,
            )
            .order_by(cls.created_at, cls.id)
            .limit(limit)
        ).all()
    for other_id, attempts in candidates:
        lease = str(uuid.uuid4())
        now = utcnow()
        with session_scope(sessions) as session:
            won = session.execute(
                update(cls)
                .where(cls.id == other_id, cls.status == Status.queued, cls.attempts == attempts)
                .values(**_claimed_values(lease, now))
                .execution_options(synchronize_session=False)
            ).rowcount  # type: ignore[attr-defined]
        if won == 1:
            yield other_id, lease


def record_heartbeat(*, session: Session, class_id: str, lease: str, progress: float) -> bool:
    """Record progress and a fresh heartbeat; False when the run no longer holds the row."""
    return (
        _update_leased(session, class_id, lease, progress=round(progress, 4), heartbeat_at=utcnow())
        == 1
    )


def store_result(
    *,
    session: Session,
    class_id: str,
    lease: str,
    text_feature: np.ndarray,
    token_embedding: np.ndarray,
    templates: Sequence[str],
    diagnostics: Any,
    threshold: float | None = None,
    exemplar_features: np.ndarray | None = None,
    impact: list[dict[str, Any]] | None = None,
) -> bool:
    """Mark the class ready with its embedding (and acceptance threshold, exemplar features and
    impact on the tenant's other classes), if the run still holds the row; the embedding,
    `ready` and the generation bump commit together or not at all."""
    feature = np.ascontiguousarray(text_feature, dtype=np.float32).reshape(-1)
    token = np.ascontiguousarray(token_embedding, dtype=np.float32).reshape(-1)
    done = session.execute(
        update(PersonalizedClass)
        .where(PersonalizedClass.id == class_id, PersonalizedClass.lease == lease)
        .values(
            status=Status.ready.value,
            progress=1.0,
            embedding=feature.tobytes(),
            dim=int(feature.shape[0]),
            token_embedding=token.tobytes(),
            token_dim=int(token.shape[0]),
            templates=list(templates),
            diagnostics=_jsonable(diagnostics),
            threshold=_finite(threshold),
            exemplar_features=_matrix_bytes(exemplar_features),
            impact=_jsonable(impact or []),
            error=None,
            lease=None,
            heartbeat_at=utcnow(),
            updated_at=utcnow(),
        )
        .execution_options(synchronize_session=False)
    ).rowcount  # type: ignore[attr-defined]
    if done == 1:
        bump_generation(session)
        # Announced in the same transaction: an event is sent if and only if the class is ready.
        add_class_event(session=session, class_id=class_id, event=CLASS_READY)
    return bool(done == 1)


def store_relearned(
    *,
    session: Session,
    class_id: str,
    read_at: datetime,
    text_feature: np.ndarray,
    token_embedding: np.ndarray,
    templates: Sequence[str],
    diagnostics: Any,
    threshold: float | None,
    exemplar_features: np.ndarray | None,
) -> bool:
    """Rewrite a ready class's learned word in place (it was re-learned beside a new class that
    took its images), if the row is still ready and unchanged since the run read it
    (`updated_at == read_at`): a class deleted, replaced or re-learned meanwhile is left alone.
    It stays ready and served throughout; its new `updated_at` is how every API process's
    class matrix finds the new row. The caller bumps the generation (with the new class's
    store, in the same transaction)."""
    feature = np.ascontiguousarray(text_feature, dtype=np.float32).reshape(-1)
    token = np.ascontiguousarray(token_embedding, dtype=np.float32).reshape(-1)
    cls = PersonalizedClass
    done = session.execute(
        update(cls)
        .where(cls.id == class_id, cls.status == Status.ready, cls.updated_at == read_at)
        .values(
            embedding=feature.tobytes(),
            dim=int(feature.shape[0]),
            token_embedding=token.tobytes(),
            token_dim=int(token.shape[0]),
            templates=list(templates),
            diagnostics=_jsonable(diagnostics),
            threshold=_finite(threshold),
            exemplar_features=_matrix_bytes(exemplar_features),
            updated_at=utcnow(),
        )
        .execution_options(synchronize_session=False)
    ).rowcount  # type: ignore[attr-defined]
    return bool(done == 1)


def store_exemplar_features(*, session: Session, class_id: str, features: np.ndarray) -> bool:
    """Keep the image features of a class's exemplars, computed for a class stored before they
    were. `updated_at` is kept: the learned word did not change, so the class matrix has
    nothing to re-read."""
    cls = PersonalizedClass
    done = session.execute(
        update(cls)
        .where(cls.id == class_id, cls.exemplar_features.is_(None))
        .values(exemplar_features=_matrix_bytes(features), updated_at=cls.updated_at)
        .execution_options(synchronize_session=False)
    ).rowcount  # type: ignore[attr-defined]
    return bool(done == 1)


def fail_class(*, session: Session, class_id: str, lease: str, reason: str) -> bool:
    """Mark the class failed with a readable reason, if the run still holds the row."""
    failed = (
        _update_leased(
            session,
            class_id,
            lease,
            status=Status.failed.value,
            error=reason[:MAX_ERROR_CHARS],
            lease=None,
        )
        == 1
    )
    if failed:
        add_class_event(session=session, class_id=class_id, event=CLASS_FAILED)
    return failed


def release_class(
    *, session: Session, class_id: str, lease: str, reason: str, count_attempt: bool = True
) -> bool:
    """Hand the row back to the queue, remembering why. Infrastructure trouble counts as an
    attempt (a class that keeps breaking workers must end); a worker told to stop does not
    (`count_attempt=False`): restarts and scale-downs must never fail a class."""
    refund = {} if count_attempt else {"attempts": PersonalizedClass.attempts - 1}
    return (
        _update_leased(
            session,
            class_id,
            lease,
            status=Status.queued.value,
            error=reason[:MAX_ERROR_CHARS],
            lease=None,
            **refund,
        )
        == 1
    )


# --- the reconciler's writes ---------------------------------------------------------------------


def claim_resends(
    *,
    sessions: sessionmaker[Session],
    now: datetime,
    queued_before: datetime,
    stale_before: datetime,
) -> Iterator[str]:
    """Rows whose message may be lost: queued and not sent since `queued_before`, or training
    with a heartbeat and a send both older than `stale_before`.

    Yields each id once its `enqueued_at` is set to `now` and committed; the compare-and-set on
    `enqueued_at` lets only one of several reconcilers re-send a row."""
    cls = PersonalizedClass

    def never_or_before(cutoff: datetime) -> Any:
        return or_(cls.enqueued_at.is_(None), cls.enqueued_at < cutoff)

    with sessions() as session:
        candidates = session.execute(
            select(cls.id, cls.enqueued_at).where(
                or_(
                    and_(cls.status == Status.queued, never_or_before(queued_before)),
                    and_(
                        cls.status == Status.training,
                        or_(cls.heartbeat_at.is_(None), cls.heartbeat_at < stale_before),
                        never_or_before(stale_before),
                    ),
                )
            )
        ).all()
        for class_id, enqueued_at in candidates:
            same = (
                cls.enqueued_at.is_(None) if enqueued_at is None else cls.enqueued_at == enqueued_at
            )
            won = session.execute(
                update(cls)
                .where(cls.id == class_id, same)
                .values(enqueued_at=now)
                .execution_options(synchronize_session=False)
            ).rowcount  # type: ignore[attr-defined]
            session.commit()
            if won == 1:
                yield class_id


# --- helpers -------------------------------------------------------------------------------------


def _update_leased(session: Session, class_id: str, owner: str, **values: Any) -> int:
    """Update the row only while the run holding the lease `owner` still owns it."""
    return int(
        session.execute(
            update(PersonalizedClass)
            .where(PersonalizedClass.id == class_id, PersonalizedClass.lease == owner)
            .values(updated_at=utcnow(), **values)
            .execution_options(synchronize_session=False)
        ).rowcount  # type: ignore[attr-defined]
    )


def _claimed_values(lease: str, now: datetime) -> dict[str, Any]:
    """The columns a successful claim sets: one more attempt, held by `lease`, fresh heartbeat."""
    return {
        "status": Status.training.value,
        "attempts": PersonalizedClass.attempts + 1,
        "lease": lease,
        "heartbeat_at": now,
        "progress": 0.0,
        "updated_at": now,
    }


def _matrix_bytes(value: np.ndarray | None) -> bytes | None:
    """A (K, E) float32 matrix as stored (rows back-to-back; E is the row's `dim`)."""
    if value is None:
        return None
    return np.ascontiguousarray(value, dtype=np.float32).tobytes()


def _finite(value: float | None) -> float | None:
    if value is None or not np.isfinite(value):
        return None
    return float(value)


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=lambda o: getattr(o, "tolist", lambda: str(o))()))
