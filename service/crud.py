"""Every write to a class row: register, remove, claim, heartbeat, store, fail, release,
reconcile. Routes, the train job and the reconciler call these; none writes a row itself.

All arguments are keyword-only. A function given a `session` writes in the caller's transaction
and leaves the commit to the caller, so several writes can commit together (a replacement removes
the old class and adds the new one atomically). A function given `sessions` (a session factory)
needs one transaction per row and commits each itself.
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import numpy as np
from sqlalchemy import and_, delete, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from liteembed.names import name_key
from service.db import session_scope
from service.models import (
    DEFAULT_TENANT,
    GENERATION_ROW,
    ClassImage,
    ClassRemoval,
    Generation,
    PersonalizedClass,
    Status,
    as_utc,
    bump_generation,
    utcnow,
)

log = logging.getLogger(__name__)

CRASH_REASON = "the worker stopped before finishing (crash, kill or time limit)"
# Longer error messages are cut: they go into a column and into API answers.
MAX_ERROR_CHARS = 2000


# --- the API's writes ----------------------------------------------------------------------------


class NameTaken(Exception):
    """A class of this name already exists for the model (`class_id` None: it appeared
    concurrently, and only the unique constraint saw it)."""

    def __init__(self, name: str, class_id: str | None) -> None:
        super().__init__(name)
        self.name = name
        self.class_id = class_id


@dataclass(frozen=True)
class Registered:
    row: PersonalizedClass
    # A ready class of the same name was replaced: the class matrix must drop it now.
    replaced_ready: bool


def register_class(
    *,
    session: Session,
    name: str,
    name_key: str,
    model_id: str,
    tenant: str,
    images: Sequence[bytes],
    hints: list[str],
    confusers: list[str],
    replace: bool,
) -> Registered:
    """Add a queued class with its images; with `replace`, a class of the same name goes in the
    same transaction (its running job notices and stops). Raises `NameTaken` otherwise.

    Registrations of one name run one at a time, so concurrent replacements all succeed and the
    last to commit wins (none is refused because another replaced the class it saw)."""
    serialize_name(session=session, model_id=model_id, tenant=tenant, name_key=name_key)
    existing = session.scalars(
        select(PersonalizedClass).where(
            PersonalizedClass.model_id == model_id,
            PersonalizedClass.tenant == tenant,
            PersonalizedClass.name_key == name_key,
        )
    ).first()
    if existing is not None and not replace:
        raise NameTaken(existing.name, existing.id)
    replaced_ready = False
    if existing is not None:
        replaced_ready = existing.status == Status.ready
        remove_class(session=session, row=existing)
        session.flush()
    now = utcnow()
    row = PersonalizedClass(
        name=name,
        name_key=name_key,
        model_id=model_id,
        tenant=tenant,
        status=Status.queued.value,
        progress=0.0,
        attempts=0,
        hints=hints,
        confusers=confusers,
        enqueued_at=now,
        created_at=now,
        updated_at=now,
    )
    row.images = [ClassImage(position=i, data=data) for i, data in enumerate(images)]
    session.add(row)
    try:
        # The unique constraint catches a concurrent registration of the same name.
        session.flush()
    except IntegrityError:
        session.rollback()
        raise NameTaken(name, None) from None
    return Registered(row=row, replaced_ready=replaced_ready)


def serialize_name(*, session: Session, model_id: str, tenant: str, name_key: str) -> None:
    """Hold, until the caller's transaction ends, the lock that orders writes of one name."""
    if session.get_bind().dialect.name == "postgresql":
        # A transaction-scoped advisory lock per (model, tenant, name): other names are not held up.
        digest = hashlib.blake2b(
            f"{model_id}\0{tenant}\0{name_key}".encode(), digest_size=8
        ).digest()
        session.execute(select(func.pg_advisory_xact_lock(int.from_bytes(digest, signed=True))))
    else:
        # SQLite has one writer at a time. Taking the write lock before the first read (a no-op
        # write) makes that read see the last committed registration; a transaction that read
        # first and wrote later would fail on its stale snapshot instead.
        session.execute(
            update(Generation).where(Generation.id == GENERATION_ROW).values(value=Generation.value)
        )


def remove_class(*, session: Session, row: PersonalizedClass) -> None:
    """Delete a class: bump the generation and log the removal.

    The one way a class leaves, so that every API process can follow it without a rebuild.
    """
    generation = bump_generation(session)
    session.add(
        ClassRemoval(
            generation=generation,
            class_id=row.id,
            model_id=row.model_id,
            tenant=row.tenant,
            name_key=row.name_key,
        )
    )
    session.delete(row)


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
) -> bool:
    """Mark the class ready with its embedding, if the run still holds the row; the embedding,
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
            error=None,
            lease=None,
            heartbeat_at=utcnow(),
            updated_at=utcnow(),
        )
        .execution_options(synchronize_session=False)
    ).rowcount  # type: ignore[attr-defined]
    if done == 1:
        bump_generation(session)
    return bool(done == 1)


def fail_class(*, session: Session, class_id: str, lease: str, reason: str) -> bool:
    """Mark the class failed with a readable reason, if the run still holds the row."""
    return (
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


def prune_removals(*, session: Session, older_than: datetime) -> int:
    """Forget removals logged before `older_than`; returns how many went.

    Everything up to the newest such generation goes and the floor moves there. That is safe
    because generations are assigned in commit order: every removal at or below it has
    committed already.
    """
    through = session.scalar(
        select(func.max(ClassRemoval.generation)).where(ClassRemoval.removed_at < older_than)
    )
    if through is None:
        return 0
    gone = session.execute(delete(ClassRemoval).where(ClassRemoval.generation <= through)).rowcount  # type: ignore[attr-defined]
    session.execute(
        update(Generation)
        .where(Generation.id == GENERATION_ROW, Generation.removals_floor < through)
        .values(removals_floor=through)
    )
    return int(gone or 0)


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


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=lambda o: getattr(o, "tolist", lambda: str(o))()))


# --- fixtures ------------------------------------------------------------------------------------


def insert_ready_classes(
    *,
    session: Session,
    model_id: str,
    names: Sequence[str],
    features: np.ndarray,
    tenants: Sequence[str] | None = None,
    ids: Sequence[str] | None = None,
) -> None:
    """Add ready classes straight from their text features (row i: `names[i]`, `features[i]`,
    of `tenants[i]`, default tenant by default) and bump the generation.

    For benchmarks and tests that need many ready classes without training each: no images, no
    token embedding, one INSERT for all rows. `ids` fixes the rows' ids (default: new UUIDs)."""
    vectors = np.ascontiguousarray(features, dtype=np.float32)
    if vectors.ndim != 2 or len(vectors) != len(names):
        raise ValueError("features must be one row per name")
    now = utcnow()
    rows = [
        {
            "id": ids[i] if ids is not None else str(uuid.uuid4()),
            "name": name,
            "name_key": name_key(name),
            "model_id": model_id,
            "tenant": tenants[i] if tenants is not None else DEFAULT_TENANT,
            "status": Status.ready.value,
            "progress": 1.0,
            "embedding": vectors[i].tobytes(),
            "dim": int(vectors.shape[1]),
            "hints": [],
            "confusers": [],
            "created_at": now,
            "updated_at": now,
        }
        for i, name in enumerate(names)
    ]
    session.execute(insert(PersonalizedClass), rows)
    bump_generation(session)
