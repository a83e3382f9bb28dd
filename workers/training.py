"""The `train_class` job: one class id in, an embedding (or a readable failure) in its row.

The job is idempotent and safe to receive twice: a ready or failed row is left alone, a row whose
heartbeat is fresh belongs to a live run elsewhere, and every write after the claim is conditional
on the run's lease, so a run that lost its row (deleted, replaced, or taken over after its worker
was presumed dead) writes nothing.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from datetime import timedelta
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from service import crud
from service.core.config import Settings
from service.db import session_scope
from service.models import ClassImage, PersonalizedClass, Status
from service.runtime import Runtime, RuntimeHolder

log = logging.getLogger(__name__)


class WorkerStopping(Exception):
    """The worker is stopping: the running optimisation ends at its next step."""


# What a handed-back row remembers (shown as its `error` until it is trained).
STOPPED_REASON = "the worker stopped mid-training; queued again"


class Trainer:
    """Everything a job needs, built once per worker process; the model loads on first use.

    `stop_soon()` (the worker is stopping) ends the running optimisation at its next step and
    hands its classes back to the queue instead of letting a long run hold the process.
    """

    def __init__(
        self,
        settings: Settings,
        session_factory: sessionmaker[Session],
        runtime: RuntimeHolder,
    ) -> None:
        self.settings = settings
        self.sessions = session_factory
        self.runtime = runtime
        self._stopping = threading.Event()

    def stop_soon(self) -> None:
        self._stopping.set()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    # --- the job -------------------------------------------------------------------------------

    def train_class(self, class_id: str) -> list[str]:
        """Train `class_id` (and queued companions). Returns the ids handed back to the queue
        because the worker is stopping: their rows are queued again, and their messages must
        be sent again for another worker."""
        if self.stopping:
            return [class_id]
        lease = self._claim(class_id)
        if lease is None:
            return []
        leases = {class_id: lease}
        heartbeat: _ClassProgressBeat | None = None
        try:
            # Other queued classes of the same model ride along: one batched optimisation costs
            # far less than running them one after another. Their own messages find them ready
            # (or training under a fresh heartbeat) later and do nothing.
            self._claim_companions(class_id, leases)
            heartbeat = _ClassProgressBeat(self, leases)
            heartbeat.start()
            self._run_batch(leases, heartbeat)
        except WorkerStopping:
            log.info("classes %s: handed back to the queue (the worker is stopping)", list(leases))
            for held_id, held_lease in leases.items():
                self._release(held_id, held_lease, STOPPED_REASON, count_attempt=False)
            return list(leases)
        except BaseException as exc:
            # Infrastructure trouble (DB, model load, time limit): hand the rows back so a retry
            # or the reconciler can claim them at once, remembering why for the final message.
            for held_id, held_lease in leases.items():
                self._release(held_id, held_lease, f"{type(exc).__name__}: {exc}")
            raise
        finally:
            if heartbeat is not None:
                heartbeat.stop()
        return []

    def _claim_companions(self, class_id: str, leases: dict[str, str]) -> None:
        """Claim up to `train_batch_max - 1` other queued rows of the same model.

        Each claim goes into `leases` as soon as it is won, so an error half-way still hands
        every claimed row back."""
        s = self.settings
        if s.train_batch_max <= 1:
            return
        claimed = 0
        for other_id, lease in crud.claim_companions(
            sessions=self.sessions,
            class_id=class_id,
            limit=s.train_batch_max - 1,
            max_attempts=s.max_attempts,
        ):
            leases[other_id] = lease
            claimed += 1
        if claimed:
            log.info("class %s: training %d queued class(es) with it", class_id, claimed)

    def _claim(self, class_id: str) -> str | None:
        with session_scope(self.sessions) as session:
            return crud.claim_class(
                session=session,
                class_id=class_id,
                stale_after=timedelta(seconds=self.settings.stale_after_seconds),
                max_attempts=self.settings.max_attempts,
            )

    def _run_batch(self, leases: dict[str, str], heartbeat: _ClassProgressBeat) -> None:
        from liteembed import ClassRequest, learn_class, learn_classes
        from liteembed.errors import LiteEmbedError, OptimizationCancelled

        runtime = self.runtime.get()
        jobs: dict[str, Any] = {}  # class id -> ClassRequest, for the rows still ours
        tenants: set[str] = set()  # one, as companions are claimed within the tenant
        with self.sessions() as session:
            for class_id, lease in leases.items():
                row = session.get(PersonalizedClass, class_id)
                if row is None or row.lease != lease:
                    continue
                if row.model_id != runtime.model_id:
                    self._fail(
                        class_id,
                        lease,
                        f"class was registered for model {row.model_id} but this worker serves "
                        f"{runtime.model_id}",
                    )
                    continue
                blobs = session.scalars(
                    select(ClassImage.data)
                    .where(ClassImage.class_id == class_id)
                    .order_by(ClassImage.position)
                ).all()
                jobs[class_id] = (row.name, list(row.hints), list(row.confusers), blobs)
                tenants.add(row.tenant)
            # The classes being trained are not ready, so none is another's negative; and only
            # the tenant's own classes are (another tenant's names must not shape this one).
            registered = self._registered(session, runtime, tenants=tenants, exclude=set(leases))
        # The images go to the engine as stored (encoded): it decodes them one at a time,
        # reduced to what the model needs, so a batch never holds its images' full pixels. A
        # class with an undecodable image fails the batch, and then alone, below.
        requests: dict[str, Any] = {
            class_id: ClassRequest(name, list(blobs), hints=hints, confusers=confusers)
            for class_id, (name, hints, confusers, blobs) in jobs.items()
        }
        if not requests:
            return
        config = self.optimization_config(runtime.model_id)
        common = {
            "registered": registered,
            "config": config,
            "seed": self.settings.seed,
            "progress": heartbeat.on_progress,
        }
        ids = list(requests)
        try:
            learned = learn_classes(
                runtime.backend, runtime.vocabulary, [requests[i] for i in ids], **common
            )
        except OptimizationCancelled:
            if self.stopping:
                raise WorkerStopping() from None
            log.info("classes %s: training abandoned (deleted, replaced or taken over)", ids)
            return
        except LiteEmbedError as exc:
            if len(ids) == 1:
                self._fail(ids[0], leases[ids[0]], str(exc) or type(exc).__name__)
                return
            # Which class is at fault (a hint not in the vocabulary, ...)? Each alone says.
            log.info("batch of %d failed (%s); training its classes one by one", len(ids), exc)
            for class_id in ids:
                request = requests[class_id]
                try:
                    one = learn_class(
                        runtime.backend,
                        runtime.vocabulary,
                        request.name,
                        request.images,
                        hints=request.hints,
                        confusers=request.confusers,
                        **common,
                    )
                except OptimizationCancelled:
                    if self.stopping:
                        raise WorkerStopping() from None
                    if heartbeat.all_lost():
                        return
                    continue
                except LiteEmbedError as one_exc:
                    self._fail(class_id, leases[class_id], str(one_exc) or type(one_exc).__name__)
                    continue
                self._store(class_id, leases[class_id], one)
            return
        # Each result in its own transaction: a class deleted meanwhile does not block the rest.
        for class_id, result in zip(ids, learned, strict=True):
            self._store(class_id, leases[class_id], result)

    def optimization_config(self, model_id: str) -> Any:
        """The model's recorded defaults (the engine's defaults where it has none), with the
        settings' TRAIN_OPTIONS and TRAIN_STEPS on top."""
        from liteembed.config import OptimizationConfig, recorded_defaults

        changes = dict(self.settings.train_options)
        if self.settings.train_steps is not None:
            # A step count set here is a fixed budget, not the hold-out rule's fallback.
            changes["steps"] = self.settings.train_steps
            changes.setdefault("step_rule", "fixed")
        base = recorded_defaults(model_id) or OptimizationConfig()
        return dataclasses.replace(base, **changes)

    def _registered(
        self, session: Session, runtime: Runtime, *, tenants: set[str], exclude: set[str]
    ) -> dict[str, Any]:
        import torch

        rows = session.execute(
            select(PersonalizedClass.name, PersonalizedClass.embedding)
            .where(
                PersonalizedClass.model_id == runtime.model_id,
                PersonalizedClass.status == Status.ready,
                PersonalizedClass.tenant.in_(tenants),
                PersonalizedClass.id.not_in(exclude),
            )
            # A stable order, so a retried job sees its negatives in the same order.
            .order_by(PersonalizedClass.created_at, PersonalizedClass.id)
        ).all()
        dim = int(runtime.backend.embed_dim)
        return {
            r.name: torch.from_numpy(np.frombuffer(r.embedding, dtype=np.float32).copy())
            for r in rows
            if r.embedding is not None and len(r.embedding) == 4 * dim
        }

    def _store(self, class_id: str, lease: str, learned: Any) -> None:
        with session_scope(self.sessions) as session:
            done = crud.store_result(
                session=session,
                class_id=class_id,
                lease=lease,
                text_feature=_as_float32(learned.text_feature),
                token_embedding=_as_float32(learned.token_embedding),
                templates=learned.templates,
                diagnostics=learned.diagnostics,
            )
        if done:
            log.info("class %s: ready", class_id)
        else:
            log.info("class %s: finished, but the row was deleted or taken over", class_id)

    def _fail(self, class_id: str, lease: str, reason: str) -> None:
        log.warning("class %s failed: %s", class_id, reason)
        with session_scope(self.sessions) as session:
            crud.fail_class(session=session, class_id=class_id, lease=lease, reason=reason)

    def _release(
        self, class_id: str, lease: str, reason: str, *, count_attempt: bool = True
    ) -> None:
        try:
            with session_scope(self.sessions) as session:
                crud.release_class(
                    session=session,
                    class_id=class_id,
                    lease=lease,
                    reason=reason,
                    count_attempt=count_attempt,
                )
        except Exception:
            log.exception("class %s: could not hand the row back; the reconciler will", class_id)

    def beat(self, class_id: str, lease: str, progress: float) -> bool:
        """One heartbeat for one class; False when this run no longer holds the row."""
        with session_scope(self.sessions) as session:
            return crud.record_heartbeat(
                session=session, class_id=class_id, lease=lease, progress=progress
            )


class _ClassProgressBeat:
    """Writes progress and heartbeat_at of every class of the run every `heartbeat_seconds`,
    from its own thread.

    A thread rather than the progress callback: the heartbeat must keep beating while the model
    loads or images are encoded, and the callback must stay cheap. A class whose conditional
    write finds its lease gone (deleted, replaced, taken over) is dropped from the beats; when
    none is left, the optimisation is asked to stop at the next step. (A lost class in a batch
    with live ones keeps training; its result is simply not written.)
    """

    def __init__(self, trainer: Trainer, leases: dict[str, str]) -> None:
        self._trainer = trainer
        self._leases = dict(leases)
        self._lost: set[str] = set()
        self._progress = 0.0
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

    def on_progress(self, event: Any) -> bool:
        total = max(int(getattr(event, "total", 0) or 0), 1)
        self._progress = min(max(float(event.step) / total, 0.0), 0.99)
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


def _as_float32(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):
        value = value.detach().float().cpu().numpy()
    return np.ascontiguousarray(np.asarray(value, dtype=np.float32).reshape(-1))
