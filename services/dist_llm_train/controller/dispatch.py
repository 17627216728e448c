"""One scheduling cycle, run when an idle worker asks for work.

The cycle snapshots every pending task and every idle live worker, lets the configured
scheduler match them, and leases every match in one transaction, not only the asking worker's:
a worker matched here gets its task on its next request without another cycle. A worker that
already holds a task gets that task (and lease) again, so a retried request is harmless.
"""

from __future__ import annotations

import sqlite3
import time
from typing import TYPE_CHECKING, Sequence

from .scheduling.base import TaskView, WorkerView

if TYPE_CHECKING:
    from .context import Controller


def next_task(ctl: "Controller", worker_id: str, now: float) -> sqlite3.Row | None:
    """The task `worker_id` holds after this call, or None when nothing was given to it."""
    held = ctl.store.held_task(worker_id)
    if held is not None:
        return held
    started = time.perf_counter()
    tasks = ctl.store.pending_views()
    if not tasks:
        return None
    workers = ctl.store.idle_worker_views()
    chosen = checked(ctl, ctl.scheduler.assign(tasks, workers), tasks, workers)
    leases = ctl.store.assign(chosen, now)
    ctl.metrics.cycle_seconds.observe(time.perf_counter() - started)
    ctl.metrics.events["assignments"] += len(leases)
    for worker, task in chosen.items():
        ctl.log.info("assigned %s to %s (lease %s)", task, worker, leases[worker])
    return ctl.store.held_task(worker_id)


def checked(ctl: "Controller", pairs: dict[str, str], tasks: Sequence[TaskView],
            workers: Sequence[WorkerView]) -> dict[str, str]:
    """The scheduler's pairs that keep its contract (known ids, each task once, memory fits);
    any other pair is logged and dropped, so a faulty scheduler cannot break exactly-once."""
    task_by_id = {t.task_id: t for t in tasks}
    worker_by_id = {w.worker_id: w for w in workers}
    used: set[str] = set()
    kept = {}
    for worker_id, task_id in pairs.items():
        task, worker = task_by_id.get(task_id), worker_by_id.get(worker_id)
        if task is None or worker is None or task_id in used or worker.memory_mb < task.memory_mb:
            ctl.log.error("scheduler %s broke its contract with %s -> %s: pair dropped",
                          ctl.config.controller.scheduler, task_id, worker_id)
            continue
        used.add(task_id)
        kept[worker_id] = task_id
    return kept
