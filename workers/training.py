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

from sqlalchemy.orm import Session, sessionmaker

from service import crud
from service.core.config import Settings
from service.db import session_scope
from service.models import PersonalizedClass
from service.runtime import Runtime, RuntimeHolder
from workers.impact import takings, to_relearn
from workers.progress import ClassProgressBeat
from workers.results import (
    KeptResults,
    as_float32,
    at_stake,
    impacts,
    learned_values,
    scored_classes,
)
from workers.settled import SettledClass, fill_exemplar_features, load_settled, stored_request

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
        heartbeat: ClassProgressBeat | None = None
        try:
            # Other queued classes of the same model ride along: one batched optimisation costs
            # far less than running them one after another. Their own messages find them ready
            # (or training under a fresh heartbeat) later and do nothing.
            self._claim_companions(class_id, leases)
            heartbeat = ClassProgressBeat(self, leases)
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

    def _run_batch(self, leases: dict[str, str], heartbeat: ClassProgressBeat) -> None:
        """Learn the leased classes, keep the tenant's other classes whole (re-learning one
        that a new class takes images from, beside it), and store everything in one
        transaction: nothing is written until all of it is learned, so a run that dies half-way
        leaves the new classes to be sent again and the others as they were."""
        runtime = self.runtime.get()
        dim = int(runtime.backend.embed_dim)
        requests: dict[str, Any] = {}  # class id -> ClassRequest, for the rows still ours
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
                # The images go to the engine as stored (encoded): it decodes them one at a
                # time, reduced to what the model needs, so a batch never holds its images'
                # full pixels.
                requests[class_id] = stored_request(session, class_id)
                tenants.add(row.tenant)
            # The classes being trained are not ready, so none is another's negative; and only
            # the tenant's own classes are (another tenant's names must not shape this one).
            settled = load_settled(
                session, model_id=runtime.model_id, tenants=tenants, exclude=set(leases), dim=dim
            )
        if not requests:
            return
        fill_exemplar_features(self.sessions, runtime.backend, settled)
        bank = self._bank(runtime, tenants)
        learned = self._learn(runtime, requests, settled, leases, heartbeat, bank)
        if not learned:
            return
        kept = self._keep_the_others(runtime, requests, learned, settled, heartbeat, bank)
        if kept is None:
            return
        self._store(leases, kept, settled)

    def _learn(
        self,
        runtime: Runtime,
        requests: dict[str, Any],
        settled: list[SettledClass],
        leases: dict[str, str],
        heartbeat: ClassProgressBeat,
        bank: Any,
    ) -> dict[str, Any]:
        """The learned classes by id (empty: the run was abandoned). A class with an
        undecodable image (or another engine error) fails the batch, and then alone."""
        from liteembed import learn_classes
        from liteembed.errors import LiteEmbedError, OptimizationCancelled

        ids = list(requests)
        common = self._engine_inputs(runtime, settled, heartbeat, bank)
        try:
            learned = learn_classes(
                runtime.backend, runtime.vocabulary, [requests[i] for i in ids], **common
            )
            return dict(zip(ids, learned, strict=True))
        except OptimizationCancelled:
            if self.stopping:
                raise WorkerStopping() from None
            log.info("classes %s: training abandoned (deleted, replaced or taken over)", ids)
            return {}
        except LiteEmbedError as exc:
            if len(ids) == 1:
                self._fail(ids[0], leases[ids[0]], str(exc) or type(exc).__name__)
                return {}
            # Which class is at fault (a hint not in the vocabulary, ...)? Each alone says.
            log.info("batch of %d failed (%s); training its classes one by one", len(ids), exc)
        alone: dict[str, Any] = {}
        for class_id in ids:
            try:
                alone[class_id] = learn_classes(
                    runtime.backend, runtime.vocabulary, [requests[class_id]], **common
                )[0]
            except OptimizationCancelled:
                if self.stopping:
                    raise WorkerStopping() from None
                if heartbeat.all_lost():
                    return {}
            except LiteEmbedError as one_exc:
                self._fail(class_id, leases[class_id], str(one_exc) or type(one_exc).__name__)
        return alone

    def _keep_the_others(
        self,
        runtime: Runtime,
        requests: dict[str, Any],
        learned: dict[str, Any],
        settled: list[SettledClass],
        heartbeat: ClassProgressBeat,
        bank: Any,
    ) -> KeptResults | None:
        """Score every exemplar of the tenant's ready classes and of the new ones against all
        their features; ready classes that now lose exemplars to a new class (or take a new
        class's) are learned again together with the new classes, once (no loop). None: the
        run was abandoned meanwhile."""
        from liteembed import learn_classes
        from liteembed.errors import LiteEmbedError, OptimizationCancelled

        names = {one.class_id: one.name for one in settled}
        before = takings(scored_classes(settled, learned))
        chosen = to_relearn(before, set(learned), limit=self.settings.train_batch_max)
        if not chosen:
            return KeptResults(learned, {}, impacts(learned, before, names, set(), None))
        with self.sessions() as session:
            again = {i: r for i in chosen if (r := stored_request(session, i)) is not None}
        rest = [one for one in settled if one.class_id not in again]
        ids = list(learned) + list(again)
        log.info(
            "classes %s take exemplars of %s (or lose theirs to them): re-learning them together",
            list(learned),
            list(again),
        )
        all_requests = {**{i: requests[i] for i in learned}, **again}
        heartbeat.next_phase()
        try:
            relearned = dict(
                zip(
                    ids,
                    learn_classes(
                        runtime.backend,
                        runtime.vocabulary,
                        [all_requests[i] for i in ids],
                        **self._engine_inputs(runtime, rest, heartbeat, bank),
                    ),
                    strict=True,
                )
            )
        except OptimizationCancelled:
            if self.stopping:
                raise WorkerStopping() from None
            log.info("classes %s: re-learning abandoned (deleted, replaced or taken over)", ids)
            return None
        except LiteEmbedError as exc:
            log.warning(
                "re-learning %s failed (%s); the new classes are stored as learned", ids, exc
            )
            return KeptResults(learned, {}, impacts(learned, before, names, set(), None))
        new = {i: relearned[i] for i in learned}
        old = {i: relearned[i] for i in again}
        updated = [
            dataclasses.replace(one, feature=as_float32(old[one.class_id].text_feature))
            if one.class_id in old
            else one
            for one in settled
        ]
        after = takings(scored_classes(updated, new))
        if at_stake(after, set(new), set(old)) > at_stake(before, set(learned), set(old)):
            # Worse than before: keep what was learned first, and the others as they were.
            log.info("re-learning %s did not help; kept as first learned", ids)
            return KeptResults(learned, {}, impacts(learned, before, names, set(), None))
        return KeptResults(new, old, impacts(new, before, names, set(old), after))

    def _bank(self, runtime: Runtime, tenants: set[str]) -> Any:
        """The model's reference bank with the tenant's features recorded from its traffic
        behind it (service/bank/), read word by word as the engine asks."""
        from service.bank.layered import tenant_bank

        return tenant_bank(
            runtime.bank,
            sessions=self.sessions,
            model_id=runtime.model_id,
            dim=int(runtime.backend.embed_dim),
            tenants=tenants,
            per_word=self.settings.bank_per_word,
        )

    def _engine_inputs(
        self,
        runtime: Runtime,
        settled: list[SettledClass],
        heartbeat: ClassProgressBeat,
        bank: Any,
    ) -> dict[str, Any]:
        """What `learn_classes` gets besides the requests: the ready classes as text-feature
        negatives and as protected image evidence, the reference bank, the config."""
        import torch

        from liteembed import ProtectedClass

        protected = [
            ProtectedClass(one.name, torch.from_numpy(one.feature), torch.from_numpy(one.exemplars))
            for one in settled
            if one.exemplars is not None and len(one.exemplars)
        ]
        return {
            "registered": {one.name: torch.from_numpy(one.feature) for one in settled},
            "protected": protected,
            "bank": bank,
            "config": self.optimization_config(runtime.model_id),
            "seed": self.settings.seed,
            "progress": heartbeat.on_progress,
        }

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

    def _store(
        self, leases: dict[str, str], kept: KeptResults, settled: list[SettledClass]
    ) -> None:
        """The new classes ready and the re-learned ones rewritten, in one transaction: a class
        is never left re-learned for a new class that was not stored, nor the reverse. Each new
        class only if this run still holds it; each re-learned class only if unchanged since
        it was read (it stays ready, and served with its old feature until this commits)."""
        read_at = {one.class_id: one.updated_at for one in settled}
        with session_scope(self.sessions) as session:
            stored = [
                class_id
                for class_id, result in kept.new.items()
                if crud.store_result(
                    session=session,
                    class_id=class_id,
                    lease=leases[class_id],
                    **learned_values(result),
                    impact=kept.impact.get(class_id, []),
                )
            ]
            rewritten = []
            if stored:
                for class_id, result in kept.relearned.items():
                    if crud.store_relearned(
                        session=session,
                        class_id=class_id,
                        read_at=read_at[class_id],
                        **learned_values(result),
                    ):
                        rewritten.append(class_id)
        for class_id in kept.new:
            if class_id in stored:
                log.info("class %s: ready", class_id)
            else:
                log.info("class %s: finished, but the row was deleted or taken over", class_id)
        for class_id in kept.relearned:
            if class_id in rewritten:
                log.info("class %s: re-learned", class_id)
            else:
                log.info("class %s: re-learned, but left as it was (changed meanwhile)", class_id)

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
