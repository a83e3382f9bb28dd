"""The writes of a class's life outside training: register (or replace), remove, prune the
removal log, and insert ready rows in bulk (benchmarks and tests). Keyword arguments only; a
function given a `session` leaves the commit to its caller."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import numpy as np
from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from liteembed.names import name_key
from service.models import (
    DEFAULT_TENANT,
    GENERATION_ROW,
    ClassImage,
    ClassRemoval,
    Generation,
    NegativeImage,
    PersonalizedClass,
    Status,
    bump_generation,
    utcnow,
)


class NameTaken(Exception):
    """A class of this name already exists for the model (`class_id` None: it appeared
    concurrently, and only the unique constraint saw it)."""

    def __init__(self, name: str, class_id: str | None) -> None:
        super().__init__(name)
        self.name = name
        self.class_id = class_id


class QuotaExceeded(Exception):
    """The tenant holds `quota` classes already (TENANT_MAX_CLASSES)."""

    def __init__(self, tenant: str, quota: int) -> None:
        super().__init__(tenant)
        self.tenant = tenant
        self.quota = quota


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
    negative_images: Sequence[bytes] = (),
    max_classes: int | None = None,
    callback_url: str | None = None,
) -> Registered:
    """Add a queued class with its images (and "not this class" images); with `replace`, a class
    of the same name goes in the same transaction (its running job notices and stops). Raises
    `NameTaken` otherwise.

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
    if max_classes is not None:
        check_quota(
            session=session,
            tenant=tenant,
            max_classes=max_classes,
            leaving=1 if existing is not None else 0,
        )
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
        callback_url=callback_url,
        enqueued_at=now,
        created_at=now,
        updated_at=now,
    )
    row.images = [ClassImage(position=i, data=data) for i, data in enumerate(images)]
    row.negative_images = [
        NegativeImage(position=i, data=data) for i, data in enumerate(negative_images)
    ]
    session.add(row)
    try:
        # The unique constraint catches a concurrent registration of the same name.
        session.flush()
    except IntegrityError:
        session.rollback()
        raise NameTaken(name, None) from None
    return Registered(row=row, replaced_ready=replaced_ready)


def check_quota(*, session: Session, tenant: str, max_classes: int, leaving: int = 0) -> None:
    """Raise `QuotaExceeded` unless the tenant may add one class (`leaving` of its classes go in
    the same transaction). Registrations of one tenant run one at a time for it, so two
    concurrent ones cannot both take the last place."""
    if session.get_bind().dialect.name == "postgresql":
        digest = hashlib.blake2b(f"quota\0{tenant}".encode(), digest_size=8).digest()
        session.execute(select(func.pg_advisory_xact_lock(int.from_bytes(digest, signed=True))))
    cls = PersonalizedClass
    held = session.scalar(select(func.count()).select_from(cls).where(cls.tenant == tenant))
    if int(held or 0) - leaving >= max_classes:
        raise QuotaExceeded(tenant, max_classes)


def mark_imported_ready(
    *,
    session: Session,
    row: PersonalizedClass,
    text_feature: np.ndarray,
    token_embedding: np.ndarray,
    templates: Sequence[str],
    threshold: float | None,
) -> None:
    """Make a just-registered (queued) class ready with a learned word brought from elsewhere
    (an export of the same model): nothing to train. Bumps the generation, in the caller's
    transaction, so every API process scores it at its next /classify."""
    feature = np.ascontiguousarray(text_feature, dtype=np.float32).reshape(-1)
    token = np.ascontiguousarray(token_embedding, dtype=np.float32).reshape(-1)
    row.status = Status.ready.value
    row.progress = 1.0
    row.embedding = feature.tobytes()
    row.dim = int(feature.shape[0])
    row.token_embedding = token.tobytes()
    row.token_dim = int(token.shape[0])
    row.templates = list(templates)
    row.threshold = threshold
    row.enqueued_at = None
    row.updated_at = utcnow()
    session.flush()
    bump_generation(session)


@dataclass(frozen=True)
class Requeued:
    moved: list[str]  # ids now queued under the new model
    kept: list[str]  # ids left as they were: a class of the same name exists under it


def requeue_for_model(*, session: Session, from_model: str, to_model: str) -> Requeued:
    """Move every class of `from_model` (a model id, or a model name: all its checkpoints) to
    `to_model`, queued to be learned again from its stored images; each keeps its id, name,
    tenant, images, hints and callback URL. A class whose name its tenant already uses under
    `to_model` stays where it is. `enqueued_at` is cleared, so the reconciler sends each."""
    cls = PersonalizedClass
    old = session.scalars(
        select(cls)
        .where(
            cls.model_id != to_model,
            (cls.model_id == from_model) | cls.model_id.startswith(f"{from_model}@"),
        )
        .order_by(cls.created_at, cls.id)
    ).all()
    taken = set(
        session.execute(select(cls.tenant, cls.name_key).where(cls.model_id == to_model)).all()
    )
    moved, kept = [], []
    for row in old:
        if (row.tenant, row.name_key) in taken:
            kept.append(row.id)
            continue
        taken.add((row.tenant, row.name_key))
        row.model_id = to_model
        row.status = Status.queued.value
        row.progress = 0.0
        row.attempts = 0
        row.lease = None
        row.heartbeat_at = None
        row.enqueued_at = None
        row.error = None
        for learned in (
            "embedding",
            "dim",
            "token_embedding",
            "token_dim",
            "templates",
            "diagnostics",
            "threshold",
            "exemplar_features",
            "impact",
        ):
            setattr(row, learned, None)
        row.updated_at = utcnow()
        moved.append(row.id)
    if moved:
        session.flush()
        bump_generation(session)
    return Requeued(moved=moved, kept=kept)


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
