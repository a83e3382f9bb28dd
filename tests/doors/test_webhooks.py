"""Webhooks: `class.ready` and `class.failed` delivered to a registration's `callback_url`,
verified with the `standardwebhooks` package; retried with backoff after a 500 (the same
`webhook-id`); kept in the database outbox, so a delivery due while no API process ran is sent
by the next one; never redirected; refused (422, nothing written) for hosts not allowed."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import func, select
from standardwebhooks.webhooks import Webhook

from service import crud
from service.core.config import Settings
from service.db import make_engine, make_session_factory, session_scope
from service.models import PersonalizedClass, WebhookDelivery, utcnow
from service.webhooks.dispatcher import WebhookDispatcher
from tests.helpers.images import class_images
from tests.helpers.webhook_receiver import Received, webhook_receiver

SECRET = "whsec_" + base64.b64encode(b"liteembed-test-webhook-secret-32b").decode()


def webhook_settings(make_settings: Callable[..., Settings], url: str, **extra: Any) -> Settings:
    return make_settings(
        url,
        webhook_allowed_hosts=["127.0.0.1"],
        webhook_secret=SECRET,
        webhook_poll_seconds=0.05,
        webhook_retry_base_seconds=0.1,
        webhook_timeout_seconds=5,
        **extra,
    )


def verified(delivery: Received) -> dict[str, Any]:
    """The body, once the Standard Webhooks verifier accepts its signature."""
    return Webhook(SECRET).verify(delivery.body, delivery.headers)  # type: ignore[no-any-return]


def deliveries(url: str) -> list[WebhookDelivery]:
    engine = make_engine(url)
    with make_session_factory(engine)() as session:
        rows = list(session.scalars(select(WebhookDelivery).order_by(WebhookDelivery.created_at)))
    engine.dispose()
    return rows


def test_ready_is_delivered_signed_and_retried_after_a_500(
    database_url: str, make_settings: Any, make_client: Any, wait_status: Any
) -> None:
    with webhook_receiver(500, 204) as receiver:
        client = make_client(webhook_settings(make_settings, database_url))
        answer = client.post(
            "/v1/classes",
            data={"name": "zorb", "callback_url": receiver.url()},
            files=class_images("green"),
        )
        assert answer.status_code == 202, answer.text
        class_id = answer.json()["id"]
        ready = wait_status(client, class_id, {"ready", "failed"})
        assert ready["status"] == "ready"
        first, second = receiver.wait_for(2)

    # Both tries carry a valid signature and the same id; the body is the class as GET says.
    assert first.headers["webhook-id"] == second.headers["webhook-id"]
    for delivery in (first, second):
        event = verified(delivery)
        assert event["type"] == "class.ready"
        assert event["data"]["id"] == class_id and event["data"]["status"] == "ready"
        assert event["data"]["threshold"] == ready["threshold"]
        assert event["timestamp"]
    [row] = deliveries(database_url)
    assert row.status == "delivered" and row.attempts == 2 and row.event == "class.ready"


def test_a_failed_class_is_announced(sqlite_url: str, make_settings: Any) -> None:
    settings = webhook_settings(make_settings, sqlite_url)
    engine = make_engine(sqlite_url)
    sessions = make_session_factory(engine)
    with webhook_receiver(200) as receiver:
        with session_scope(sessions) as session:
            row = crud.register_class(
                session=session,
                name="plax",
                name_key="plax",
                model_id="m",
                tenant="acme",
                images=[b"x"],
                hints=[],
                confusers=[],
                replace=False,
                callback_url=receiver.url("/events"),
            ).row
            class_id = row.id
        with session_scope(sessions) as session:
            lease = crud.claim_class(
                session=session,
                class_id=class_id,
                stale_after=timedelta(seconds=60),
                max_attempts=3,
            )
        assert lease is not None
        with session_scope(sessions) as session:
            assert crud.fail_class(session=session, class_id=class_id, lease=lease, reason="boom")
        dispatcher = WebhookDispatcher(sessions, settings)
        assert dispatcher.run_once() == 1
        [delivery] = receiver.wait_for(1)
        dispatcher.stop()
    event = verified(delivery)
    assert delivery.path == "/events"
    assert event["type"] == "class.failed"
    assert event["data"]["status"] == "failed" and event["data"]["error"] == "boom"
    assert event["data"]["tenant"] == "acme"
    engine.dispose()


def test_a_delivery_outlives_the_processes(sqlite_url: str, make_settings: Any) -> None:
    """Written while no API process runs (and one claimed by a process that then died): the
    next API process sends both."""
    settings = webhook_settings(make_settings, sqlite_url)
    engine = make_engine(sqlite_url)
    sessions = make_session_factory(engine)
    with webhook_receiver(200) as receiver:
        now = utcnow()
        with session_scope(sessions) as session:
            for index, locked_until in enumerate((None, now - timedelta(seconds=1))):
                session.add(
                    WebhookDelivery(
                        id=f"msg_{index}",
                        class_id=f"c{index}",
                        tenant="default",
                        event="class.ready",
                        url=receiver.url(),
                        payload=json.dumps({"type": "class.ready", "data": {"id": f"c{index}"}}),
                        status="pending",
                        attempts=1 if locked_until else 0,
                        next_attempt_at=now,
                        locked_until=locked_until,
                        created_at=now,
                    )
                )
        # One held by a live process is left alone until its lock expires.
        with session_scope(sessions) as session:
            session.add(
                WebhookDelivery(
                    id="msg_held",
                    class_id="c9",
                    tenant="default",
                    event="class.ready",
                    url=receiver.url(),
                    payload="{}",
                    status="pending",
                    attempts=0,
                    next_attempt_at=now,
                    locked_until=now + timedelta(minutes=5),
                    created_at=now,
                )
            )
        dispatcher = WebhookDispatcher(sessions, settings)
        assert dispatcher.run_once() == 2
        received = receiver.wait_for(2)
        dispatcher.stop()
    assert sorted(r.headers["webhook-id"] for r in received) == ["msg_0", "msg_1"]
    assert all(verified(r)["type"] == "class.ready" for r in received)
    states = {row.id: row.status for row in deliveries(sqlite_url)}
    assert states == {"msg_0": "delivered", "msg_1": "delivered", "msg_held": "pending"}
    engine.dispose()


def test_redirects_are_not_followed_and_attempts_end(sqlite_url: str, make_settings: Any) -> None:
    settings = webhook_settings(make_settings, sqlite_url, webhook_max_attempts=2)
    engine = make_engine(sqlite_url)
    sessions = make_session_factory(engine)
    with webhook_receiver(302) as receiver:
        receiver.redirect_to = receiver.url("/elsewhere")
        now = utcnow()
        with session_scope(sessions) as session:
            session.add(
                WebhookDelivery(
                    id="msg_r",
                    class_id="c",
                    tenant="default",
                    event="class.ready",
                    url=receiver.url(),
                    payload="{}",
                    status="pending",
                    attempts=0,
                    next_attempt_at=now,
                    created_at=now,
                )
            )
        dispatcher = WebhookDispatcher(sessions, settings)
        assert dispatcher.run_once() == 1
        [row] = deliveries(sqlite_url)
        assert row.status == "pending" and "redirects are not followed" in (row.last_error or "")
        # The retry is due after the backoff, and the second failure is the last.
        with session_scope(sessions) as session:
            session.get(WebhookDelivery, "msg_r").next_attempt_at = utcnow()  # type: ignore[union-attr]
        assert dispatcher.run_once() == 1
        dispatcher.stop()
    assert [r.path for r in receiver.received] == ["/hook", "/hook"]
    [row] = deliveries(sqlite_url)
    assert row.status == "failed" and row.attempts == 2
    engine.dispose()


@pytest.mark.parametrize(
    ("allowed", "url", "words"),
    [
        ([], "http://127.0.0.1:9/hook", "none is set"),
        (["hooks.example.com"], "http://127.0.0.1:9/hook", "not in LITEEMBED_WEBHOOK_ALLOWED"),
        (["127.0.0.1:80"], "http://127.0.0.1:9/hook", "not in LITEEMBED_WEBHOOK_ALLOWED"),
        (["127.0.0.1"], "ftp://127.0.0.1/hook", "http:// or https://"),
        (["127.0.0.1"], "http://user:pw@127.0.0.1/hook", "credentials"),
    ],
)
def test_a_callback_url_outside_the_allowed_hosts_is_a_422_and_writes_nothing(
    sqlite_url: str,
    make_settings: Any,
    make_client: Any,
    allowed: list[str],
    url: str,
    words: str,
) -> None:
    extra = {"webhook_allowed_hosts": allowed, "webhook_secret": SECRET} if allowed else {}
    client = make_client(make_settings(sqlite_url, **extra))
    for send in (
        lambda: client.post(
            "/v1/classes", data={"name": "zorb", "callback_url": url}, files=class_images("green")
        ),
        lambda: client.post(
            "/v1/classes",
            json={
                "name": "zorb",
                "callback_url": url,
                "images": [base64.b64encode(class_images("green")[0][1][1]).decode()],
            },
        ),
    ):
        answer = send()
        assert answer.status_code == 422, answer.text
        assert words in answer.json()["detail"]
    engine = make_engine(sqlite_url)
    with make_session_factory(engine)() as session:
        assert session.scalar(select(func.count()).select_from(PersonalizedClass)) == 0
    engine.dispose()


def test_allowed_hosts_without_a_secret_is_a_settings_error(make_settings: Any) -> None:
    with pytest.raises(ValueError, match="WEBHOOK_SECRET"):
        make_settings("sqlite://", webhook_allowed_hosts=["hooks.example.com"])
    with pytest.raises(ValueError, match="whsec_"):
        make_settings("sqlite://", webhook_secret="not-a-secret")
