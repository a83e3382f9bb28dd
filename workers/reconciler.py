"""Re-sends jobs whose message may be lost.

Redis can lose messages (restart without persistence, FLUSHALL, a send that failed after the
commit) and Dramatiq's own redelivery of a dead worker's message waits for its random
maintenance pass. The database knows better: a row queued for too long, or in training with a
stale heartbeat, gets its id sent again. Duplicates are harmless because the job is idempotent.
"""

from __future__ import annotations

import logging
import threading
from datetime import timedelta

from sqlalchemy.orm import Session, sessionmaker

from service import crud
from service.core.config import Settings
from service.db import is_unavailable
from service.models import utcnow
from service.outage import OutageLog
from service.queue import Producer

log = logging.getLogger(__name__)


def reconcile_once(
    session_factory: sessionmaker[Session],
    producer: Producer,
    settings: Settings,
    *,
    all_queued: bool = False,
) -> list[str]:
    """One pass; `all_queued` re-sends every queued row (the in-memory queue was just created
    empty, so anything queued in the database has no message)."""
    now = utcnow()
    sent: list[str] = []
    for class_id in crud.claim_resends(
        sessions=session_factory,
        now=now,
        queued_before=now - timedelta(seconds=0 if all_queued else settings.queued_resend_seconds),
        stale_before=now - timedelta(seconds=settings.stale_after_seconds),
    ):
        try:
            producer.send_train(class_id)
            sent.append(class_id)
        except Exception:
            log.exception("reconciler: could not re-send %s; next pass will retry", class_id)
    if sent:
        log.warning("reconciler: re-sent %d stuck job(s): %s", len(sent), ", ".join(sent))
    with session_factory() as session:
        pruned = crud.prune_removals(
            session=session,
            older_than=now - timedelta(seconds=settings.removal_log_retention_seconds),
        )
        session.commit()
    if pruned:
        log.info("reconciler: pruned %d old entries from the removal log", pruned)
    return sent


class Reconciler:
    def __init__(
        self,
        session_factory: sessionmaker[Session],
        producer: Producer,
        settings: Settings,
        *,
        queue_is_new: bool = False,
    ) -> None:
        self._queue_is_new = queue_is_new
        self._factory = session_factory
        self._producer = producer
        self._settings = settings
        self._database = OutageLog("database (reconciler)", log, meanwhile="retrying each pass")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="liteembed-reconciler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        if self._queue_is_new:
            try:
                reconcile_once(self._factory, self._producer, self._settings, all_queued=True)
            except Exception:
                log.exception("reconciler start-up pass failed")
        while not self._stop.wait(self._settings.reconcile_interval_seconds):
            try:
                reconcile_once(self._factory, self._producer, self._settings)
                self._database.succeeded()
            except Exception as exc:
                # An unreachable database is one line per outage, not a traceback per pass.
                if is_unavailable(exc):
                    self._database.failed(exc)
                else:
                    log.exception("reconciler pass failed; trying again next interval")
