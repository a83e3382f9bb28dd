"""A training run's heartbeat: progress and liveness of each of its classes, from a thread."""

from __future__ import annotations

import logging
import threading
from typing import Any, Protocol

from service.core.config import Settings

log = logging.getLogger(__name__)


class BeatingRun(Protocol):
    """What the heartbeat needs of the run it beats for (the train job's `Trainer`)."""

    settings: Settings

    @property
    def stopping(self) -> bool: ...

    def beat(self, class_id: str, lease: str, progress: float) -> bool: ...


class ClassProgressBeat:
    """Writes progress and heartbeat_at of every class of the run every `heartbeat_seconds`,
    from its own thread.

    A thread rather than the progress callback: the heartbeat must keep beating while the model
    loads or images are encoded, and the callback must stay cheap. A class whose conditional
    write finds its lease gone (deleted, replaced, taken over) is dropped from the beats; when
    none is left, the optimisation is asked to stop at the next step. (A lost class in a batch
    with live ones keeps training; its result is simply not written.)
    """

    def __init__(self, trainer: BeatingRun, leases: dict[str, str]) -> None:
        self._trainer = trainer
        self._leases = dict(leases)
        self._lost: set[str] = set()
        self._progress = 0.0
        # A later optimisation of the same run (a re-learn) moves progress on from where the
        # first left it, instead of starting again from zero.
        self._phase_start = 0.0
        self._cancelled = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="liteembed-heartbeat", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def all_lost(self) -> bool:
        return self._cancelled.is_set()

    def next_phase(self) -> None:
        self._phase_start = self._progress

    def on_progress(self, event: Any) -> bool:
        total = max(int(getattr(event, "total", 0) or 0), 1)
        fraction = min(max(float(event.step) / total, 0.0), 1.0)
        start = self._phase_start
        self._progress = min(start + (0.99 - start) * fraction, 0.99)
        return self._cancelled.is_set() or self._trainer.stopping

    def _run(self) -> None:
        while not self._stop.wait(self._trainer.settings.heartbeat_seconds):
            for class_id, lease in self._leases.items():
                if class_id in self._lost:
                    continue
                try:
                    alive = self._trainer.beat(class_id, lease, self._progress)
                except Exception:
                    log.exception("class %s: heartbeat write failed", class_id)
                    continue
                if not alive:
                    self._lost.add(class_id)
            if len(self._lost) == len(self._leases):
                self._cancelled.set()
                return
