"""The queue's worker side, behind one facade: import from `workers`, not its modules.

- `running_worker` is the one way to start a worker; `embedded_worker` (a thread in the API
  process, in-memory queue) and `run_worker_process` (`liteembed worker`, Redis) both use it.
- `create_app_with_worker` is the app `liteembed serve` runs.
- `Trainer` runs the `train_class` job; `reconcile_once` / `Reconciler` re-send lost jobs.

The queue library is known only to `workers/_broker.py` (consumer) and `service/queue.py`
(producer); producers send jobs by actor name and never import this package.
"""

from workers._runner import (
    RunningWorker,
    create_app_with_worker,
    embedded_worker,
    run_worker_process,
    running_worker,
)
from workers.reconciler import Reconciler, reconcile_once
from workers.training import Trainer

__all__ = [
    "Reconciler",
    "RunningWorker",
    "Trainer",
    "create_app_with_worker",
    "embedded_worker",
    "reconcile_once",
    "run_worker_process",
    "running_worker",
]
