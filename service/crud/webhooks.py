"""The outbox's writes: an event added with the status change it announces, and the
dispatcher's claim, success and failure of each delivery."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from service.models import PersonalizedClass, WebhookDelivery, utcnow
from service.webhooks.events import class_event_body

PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"
# Longer errors are cut: they are for an operator's eyes.
MAX_DELIVERY_ERROR_CHARS = 500


def add_class_event(*, session: Session, class_id: str, event: str) -> bool:
    """Queue `event` for the class's callback URL, in the caller's transaction (after the
    status change was written in it); False when the class has none."""
    row = session.get(PersonalizedClass, class_id, populate_existing=True)
    if row is None or not row.callback_url:
        return False
    now = utcnow()
    session.add(
        WebhookDelivery(
            id=f"msg_{uuid.uuid4().hex}",
            class_id=row.id,
            tenant=row.tenant,
            event=event,
            url=row.callback_url,
            payload=class_event_body(event, row),
            status=PENDING,
            attempts=0,
            next_attempt_at=now,
            created_at=now,
        )
    )
    return True


def claim_due_deliveries(
    *, sessions: sessionmaker[Session], now: datetime, lock_for: timedelta, limit: int
) -> Iterator[WebhookDelivery]:
    """Pending deliveries due by `now` that no live process holds, each claimed (compare-and-set
    on `locked_until`) and committed before it is yielded: of several API processes, one sends
    it. A process that dies mid-send leaves it to be claimed again once the lock expires."""
    d = WebhookDelivery
    free = or_(d.locked_until.is_(None), d.locked_until < now)
    with sessions() as session:
        due = session.scalars(
            select(d.id)
            .where(d.status == PENDING, d.next_attempt_at <= now, free)
            .order_by(d.next_attempt_at)
            .limit(limit)
        ).all()
        for delivery_id in due:
            won = session.execute(
                update(d)
                .where(d.id == delivery_id, d.status == PENDING, free)
                .values(locked_until=now + lock_for)
                .execution_options(synchronize_session=False)
            ).rowcount  # type: ignore[attr-defined]
            session.commit()
            if won == 1:
                claimed = session.get(d, delivery_id, populate_existing=True)
                if claimed is not None:
                    session.expunge(claimed)
                    yield claimed


def record_delivered(*, session: Session, delivery_id: str) -> None:
    session.execute(
        update(WebhookDelivery)
        .where(WebhookDelivery.id == delivery_id)
        .values(
            status=DELIVERED,
            attempts=WebhookDelivery.attempts + 1,
            delivered_at=utcnow(),
            locked_until=None,
            last_error=None,
        )
    )


def record_failed_attempt(
    *, session: Session, delivery_id: str, error: str, retry_at: datetime | None
) -> None:
    """One more failed try: due again at `retry_at`, or given up (`failed`) when None."""
    values = {
        "attempts": WebhookDelivery.attempts + 1,
        "last_error": error[:MAX_DELIVERY_ERROR_CHARS],
        "locked_until": None,
    }
    if retry_at is None:
        values["status"] = FAILED
    else:
        values["next_attempt_at"] = retry_at
    session.execute(
        update(WebhookDelivery).where(WebhookDelivery.id == delivery_id).values(**values)
    )
