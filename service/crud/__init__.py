"""Every write to a class row: register, remove, claim, heartbeat, store, fail, release,
reconcile. Routes, the train job and the reconciler call these; none writes a row itself.

All arguments are keyword-only. A function given a `session` writes in the caller's transaction
and leaves the commit to the caller, so several writes can commit together (a replacement removes
the old class and adds the new one atomically). A function given `sessions` (a session factory)
needs one transaction per row and commits each itself.
"""

from service.crud.classes import (
    NameTaken,
    QuotaExceeded,
    Registered,
    Requeued,
    check_quota,
    insert_ready_classes,
    mark_imported_ready,
    prune_removals,
    register_class,
    remove_class,
    requeue_for_model,
    serialize_name,
)
from service.crud.leases import (
    CRASH_REASON,
    MAX_ERROR_CHARS,
    claim_class,
    claim_companions,
    claim_resends,
    fail_class,
    record_heartbeat,
    release_class,
    store_exemplar_features,
    store_relearned,
    store_result,
)

__all__ = [
    "CRASH_REASON",
    "MAX_ERROR_CHARS",
    "NameTaken",
    "QuotaExceeded",
    "Registered",
    "Requeued",
    "claim_class",
    "claim_companions",
    "check_quota",
    "claim_resends",
    "fail_class",
    "insert_ready_classes",
    "mark_imported_ready",
    "prune_removals",
    "record_heartbeat",
    "register_class",
    "release_class",
    "remove_class",
    "requeue_for_model",
    "serialize_name",
    "store_exemplar_features",
    "store_relearned",
    "store_result",
]
