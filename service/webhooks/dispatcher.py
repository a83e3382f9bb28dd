"""Sends the outbox's due deliveries, from a thread in every API process.

Why the API processes: every deployment runs at least one, whichever way its workers run, and
the outbox row (written with the status change) is what survives a restart, not the thread: a
delivery that was due while every API process was down is sent by the first one back; one
whose sender died mid-request is claimed again by any process once its lock expires. At least
once, then: a receiver de-duplicates by `webhook-id`, the same on every try.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import timedelta
from urllib.parse import urlsplit

import httpx
from sqlalchemy.orm import Session, sessionmaker

from service.core.config import Settings
from service.crud.webhooks import claim_due_deliveries, record_delivered, record_failed_attempt
from service.db import session_scope
from service.models import WebhookDelivery, utcnow
from service.webhooks.signing import signed_headers
from service.webhooks.urls import host_allowed

log = logging.getLogger(__name__)

# Deliveries claimed per pass; the rest wait for the next one.
_BATCH = 20


class WebhookDispatcher:
    def __init__(
        self,
        sessions: sessionmaker[Session],
        settings: Settings,
        *,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        assert settings.webhook_secret is not None
        self._sessions = sessions
        self._settings = settings
        self._secret = settings.webhook_secret.get_secret_value()
        # Redirects are never followed: a receiver must not be able to point the service at
        # a host the operator did not allow.
        self._http = httpx.Client(
            timeout=settings.webhook_timeout_seconds,
            follow_redirects=False,
            transport=transport,
            headers={"user-agent": "liteembed-webhooks"},
        )
        # Long enough for one send: another process takes the delivery over only after it.
        self._lock_for = timedelta(seconds=2 * settings.webhook_timeout_seconds + 5)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="liteembed-webhooks", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self._settings.webhook_timeout_seconds + 5)
        self._http.close()

    def is_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def run_once(self) -> int:
        """Send every delivery due now; returns how many were tried."""
        tried = 0
        claimed = claim_due_deliveries(
            sessions=self._sessions, now=utcnow(), lock_for=self._lock_for, limit=_BATCH
        )
        for delivery in claimed:
            if self._stop.is_set():
                break
            self._send(delivery)
            tried += 1
        return tried

    def _loop(self) -> None:
        while not self._stop.wait(self._settings.webhook_poll_seconds):
            try:
                while self.run_once() == _BATCH and not self._stop.is_set():
                    pass
            except Exception as exc:  # the database away: try again at the next poll
                log.warning("webhook deliveries not sent this pass: %s", exc)

    def _send(self, delivery: WebhookDelivery) -> None:
        parts = urlsplit(delivery.url)
        if not host_allowed(parts.hostname or "", parts.port, self._settings.webhook_allowed_hosts):
            self._failed(delivery, "its host is no longer in WEBHOOK_ALLOWED_HOSTS", final=True)
            return
        body = delivery.payload.encode()
        headers = signed_headers(self._secret, delivery.id, int(time.time()), body)
        try:
            response = self._http.post(delivery.url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            self._failed(delivery, f"{type(exc).__name__}: {exc}")
            return
        if response.is_success:
            with session_scope(self._sessions) as session:
                record_delivered(session=session, delivery_id=delivery.id)
            log.info("webhook %s %s delivered to %s", delivery.id, delivery.event, parts.hostname)
        elif response.is_redirect:
            self._failed(delivery, f"HTTP {response.status_code}: redirects are not followed")
        else:
            self._failed(delivery, f"HTTP {response.status_code}")

    def _failed(self, delivery: WebhookDelivery, error: str, *, final: bool = False) -> None:
        settings = self._settings
        tries = delivery.attempts + 1
        retry_at = None
        if not final and tries < settings.webhook_max_attempts:
            wait = min(
                settings.webhook_retry_base_seconds * 2 ** (tries - 1),
                settings.webhook_retry_max_seconds,
            )
            retry_at = utcnow() + timedelta(seconds=wait)
        with session_scope(self._sessions) as session:
            record_failed_attempt(
                session=session, delivery_id=delivery.id, error=error, retry_at=retry_at
            )
        log.warning(
            "webhook %s %s to %s failed (try %d): %s; %s",
            delivery.id,
            delivery.event,
            urlsplit(delivery.url).hostname,
            tries,
            error,
            f"next try at {retry_at:%H:%M:%S}" if retry_at else "given up",
        )
