"""Keeps the features of confidently labelled /v1/classify images, off the request path.

A request hands its observations to a bounded in-process queue and returns at once; one
background thread per API process writes them in batches. A full queue (the database slow or
away) drops what does not fit and counts it: the bank is a training aid, never worth a slower
or failed answer, and its memory stays bounded whatever the traffic.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Sequence

import numpy as np
from sqlalchemy.orm import Session, sessionmaker

from service.api.schemas import Prediction
from service.bank.selection import KnowsWords, recorded_word
from service.core.config import Settings
from service.crud.bank import Observation, record_features
from service.db import session_scope

log = logging.getLogger(__name__)

# Observations waiting to be written, per process: about 2 MB at 512 dimensions.
QUEUE_CAPACITY = 1024
# Written in one transaction.
WRITE_BATCH = 64
# How often the writer looks up from an empty queue to see whether it must stop.
POLL_SECONDS = 0.5

Count = Callable[[int], None]


def _ignore(_: int) -> None:
    pass


class BankRecorder:
    """`observe` on the request path (never blocks, never raises); `start`/`stop` the writer."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        settings: Settings,
        *,
        capacity: int = QUEUE_CAPACITY,
        recorded: Count = _ignore,
        dropped: Count = _ignore,
    ) -> None:
        self._sessions = sessions
        self._settings = settings
        self._queue: queue.Queue[Observation] = queue.Queue(maxsize=capacity)
        self._recorded = recorded
        self._dropped = dropped
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="liteembed-bank", daemon=True)

    def observe(
        self,
        *,
        model_id: str,
        tenant: str,
        vocabulary: KnowsWords,
        features: Sequence[np.ndarray],
        ranked: Sequence[list[Prediction]],
    ) -> None:
        """Queue the feature of each image whose answer `selection.recorded_word` keeps, when
        `tenant` is opted in."""
        try:
            if not self._settings.bank_records(tenant):
                return
            for feature, predictions in zip(features, ranked, strict=True):
                word = recorded_word(predictions, vocabulary, self._settings.bank_min_score)
                if word is not None:
                    vector = np.asarray(feature, dtype=np.float32).reshape(-1)
                    self.offer(Observation(model_id, tenant, word, vector.tobytes(), vector.size))
        except Exception:
            log.exception("bank: an observation could not be queued; the answer is unaffected")

    def offer(self, observation: Observation) -> bool:
        """Queue one observation; False (and counted) when the queue is full."""
        try:
            self._queue.put_nowait(observation)
        except queue.Full:
            self._dropped(1)
            return False
        return True

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Write what is queued, then end the thread."""
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def wait_written(self) -> None:
        """Until everything queued so far is written (or dropped): for tests and shutdown."""
        self._queue.join()

    def _run(self) -> None:
        while True:
            try:
                first = self._queue.get(timeout=POLL_SECONDS)
            except queue.Empty:
                if self._stopping.is_set():
                    return
                continue
            batch = [first]
            while len(batch) < WRITE_BATCH:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            try:
                self._write(batch)
            finally:
                for _ in batch:
                    self._queue.task_done()

    def _write(self, batch: list[Observation]) -> None:
        try:
            with session_scope(self._sessions) as session:
                record_features(
                    session=session, observations=batch, per_word=self._settings.bank_per_word
                )
        except Exception as exc:
            # The database away or busy: these are lost, like a full queue's.
            log.warning("bank: %d observation(s) not written: %s", len(batch), exc)
            self._dropped(len(batch))
            return
        self._recorded(len(batch))
