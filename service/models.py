"""Tables. The `classes` row is the source of truth for a class and its training job."""

from __future__ import annotations

import enum
import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    select,
    update,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(value: datetime | None) -> datetime | None:
    """SQLite hands timestamps back without a zone; they were written in UTC."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


# The tenant of classes registered before tenants existed, and of the keys set in the environment.
DEFAULT_TENANT = "default"
# Tenant ids: short, lower-case, URL- and log-safe (and never containing the class matrix's
# key separator "/").
TENANT_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"


class Status(enum.StrEnum):
    queued = "queued"
    training = "training"
    ready = "ready"
    failed = "failed"


class Base(DeclarativeBase):
    pass


class PersonalizedClass(Base):
    __tablename__ = "classes"
    __table_args__ = (
        # Names are unique per model within a tenant; name_key (liteembed.names: NFKC +
        # casefold) makes "Tea", "tea" and "ｔｅａ" collide.
        UniqueConstraint("model_id", "tenant", "name_key", name="uq_classes_tenant_name"),
        Index("ix_classes_status", "status"),
        # Covers the class matrix's incremental update: the count of ready rows of a model and
        # the rows that became ready since, without scanning 10^5 rows of embeddings.
        Index("ix_classes_ready", "model_id", "status", "updated_at"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=lambda: str(uuid.uuid4()))
    # The tenant that owns the class: only its keys (and admin keys) see it.
    tenant: Mapped[str] = mapped_column(String(64), default=DEFAULT_TENANT)
    name: Mapped[str] = mapped_column(String(200))
    name_key: Mapped[str] = mapped_column(String(200))
    model_id: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(16), default=Status.queued.value)
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # Identifies the job run that currently owns the row; a run that lost it writes nothing.
    lease: Mapped[str | None] = mapped_column(String(36), nullable=True)
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    enqueued_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    hints: Mapped[list[str]] = mapped_column(JSON, default=list)
    confusers: Mapped[list[str]] = mapped_column(JSON, default=list)
    embedding: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    dim: Mapped[int | None] = mapped_column(Integer, nullable=True)
    token_embedding: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    token_dim: Mapped[int | None] = mapped_column(Integer, nullable=True)
    templates: Mapped[list[str] | None] = mapped_column(JSON, nullable=True)
    diagnostics: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    # Raw cosine at or above which an image counts as this class (None: the model's default for
    # plain words applies).
    threshold: Mapped[float | None] = mapped_column(Float, nullable=True)
    # (K, dim) float32 image features of the class's own images, un-augmented: what later
    # registrations protect, and what is re-scored after each one, without decoding again.
    exemplar_features: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    # The tenant's classes whose exemplars this class took when it became ready
    # (workers/impact.py), and whether they were re-learned.
    impact: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON, nullable=True)
    # Where `class.ready` / `class.failed` are delivered (service/webhooks/); None: nowhere.
    callback_url: Mapped[str | None] = mapped_column(String(2000), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, onupdate=utcnow
    )

    images: Mapped[list[ClassImage]] = relationship(
        back_populates="owner",
        cascade="all, delete-orphan",
        passive_deletes=True,
        order_by="ClassImage.position",
    )
    negative_images: Mapped[list[NegativeImage]] = relationship(
        back_populates="owner",
        cascade="all, delete-orphan",
        passive_deletes=True,
        order_by="NegativeImage.position",
    )


class ClassImage(Base):
    """Uploaded bytes live in the database, so no user-supplied name ever becomes a path."""

    __tablename__ = "class_images"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    class_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("classes.id", ondelete="CASCADE"), index=True
    )
    position: Mapped[int] = mapped_column(Integer)
    data: Mapped[bytes] = mapped_column(LargeBinary)

    owner: Mapped[PersonalizedClass] = relationship(back_populates="images")


class NegativeImage(Base):
    """A "not this class" image sent at registration, kept for retraining like the exemplars.

    A table of its own rather than a flag on `class_images`: every reader of a class's images
    (training, thumbnails) wants the exemplars, and must not have to filter out the negatives.
    """

    __tablename__ = "class_negative_images"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    class_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("classes.id", ondelete="CASCADE"), index=True
    )
    position: Mapped[int] = mapped_column(Integer)
    data: Mapped[bytes] = mapped_column(LargeBinary)

    owner: Mapped[PersonalizedClass] = relationship(back_populates="negative_images")


class Generation(Base):
    """A counter bumped in the same transaction as every change to the set of ready classes.

    Every API process compares it with the value its class matrix was built from: one primary-key
    read instead of re-reading all embeddings. The bump takes the row's write lock until commit,
    so generation values are handed out in commit order.
    """

    __tablename__ = "class_generation"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    value: Mapped[int] = mapped_column(BigInteger, default=0)
    # Removals at or below this generation were pruned from `class_removals`: a class matrix
    # built before it cannot learn what left since, and must be rebuilt in full.
    removals_floor: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")


class ClassRemoval(Base):
    """A class that left (deleted, or replaced under its name), with the generation it left at.

    Why: an API process holding 10^5 classes drops these rows from its matrix in place instead
    of re-reading every embedding, which would stall requests for seconds. Pruned after
    `removal_log_retention_seconds` by the reconciler (`crud.prune_removals`).
    """

    __tablename__ = "class_removals"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    generation: Mapped[int] = mapped_column(BigInteger, index=True)
    class_id: Mapped[str] = mapped_column(String(36))
    model_id: Mapped[str] = mapped_column(String(200))
    tenant: Mapped[str] = mapped_column(String(64), default=DEFAULT_TENANT)
    name_key: Mapped[str] = mapped_column(String(200))
    removed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ApiKey(Base):
    """A key issued through the admin API. Only a hash of the secret is kept (service/keys.py)."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=lambda: str(uuid.uuid4()))
    # The first characters of the key, shown in lists so an operator can tell keys apart.
    prefix: Mapped[str] = mapped_column(String(16))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    tenant: Mapped[str | None] = mapped_column(String(64), nullable=True)  # None: an admin key
    role: Mapped[str] = mapped_column(String(8))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class WebhookDelivery(Base):
    """One event to deliver to a class's callback URL: the outbox (service/webhooks/).

    Written in the transaction that changes the class's status, so an event is never lost to a
    crash in between; sent at least once by whichever API process claims it (`locked_until`),
    retried with backoff until `delivered` or, after WEBHOOK_MAX_ATTEMPTS, `failed`.
    """

    __tablename__ = "webhook_deliveries"
    __table_args__ = (Index("ix_webhook_deliveries_due", "status", "next_attempt_at"),)

    # The Standard Webhooks `webhook-id`: the same on every try, so receivers can de-duplicate.
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    class_id: Mapped[str] = mapped_column(String(36), index=True)
    tenant: Mapped[str] = mapped_column(String(64))
    event: Mapped[str] = mapped_column(String(32))
    url: Mapped[str] = mapped_column(String(2000))
    # The exact body sent (and signed): the class as it was when the event happened.
    payload: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # A claimed delivery is left alone by other processes until then; one whose process died
    # mid-send is claimed again after it.
    locked_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    delivered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class BankFeature(Base):
    """An image feature from an opted-in tenant's /v1/classify traffic, labelled by the plain
    vocabulary word the model answered confidently (service/bank/): images of the words a new
    class is trained not to take. The feature only, never the image; at most BANK_PER_WORD per
    (model, tenant, word), the newest kept."""

    __tablename__ = "bank_features"
    __table_args__ = (
        # The per-word trim and the train job's lookup of one word, newest first.
        Index("ix_bank_features_word", "model_id", "tenant", "word", "id"),
        Index("ix_bank_features_tenant", "tenant"),
    )

    # Insertion order is "newest": one sequence for every API process, unlike their clocks.
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    model_id: Mapped[str] = mapped_column(String(200))
    tenant: Mapped[str] = mapped_column(String(64))
    word: Mapped[str] = mapped_column(String(200))
    # (dim,) float32, L2-normalised: the feature the request computed.
    feature: Mapped[bytes] = mapped_column(LargeBinary)
    dim: Mapped[int] = mapped_column(Integer)
    recorded_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


GENERATION_ROW = 1


def bump_generation(session: Session) -> int:
    """Advance the generation in the caller's transaction; returns the new value."""
    result = session.execute(
        update(Generation).where(Generation.id == GENERATION_ROW).values(value=Generation.value + 1)
    )
    if result.rowcount == 0:  # type: ignore[attr-defined]
        session.add(Generation(id=GENERATION_ROW, value=1, removals_floor=0))
        session.flush()
        return 1
    return int(session.scalar(select(Generation.value).where(Generation.id == GENERATION_ROW)))


def read_generation(session: Session) -> int:
    row = session.get(Generation, GENERATION_ROW, populate_existing=True)
    return row.value if row is not None else 0


def read_removals_floor(session: Session) -> int:
    floor = session.scalar(select(Generation.removals_floor).where(Generation.id == GENERATION_ROW))
    return int(floor or 0)
