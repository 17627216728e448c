"""`gale-shapley`: a stable matching of pending tasks and idle workers, one task per worker.

Preferences (all strict; `estimate.completion_s` is the cost model):
- Acceptable pairs: worker memory_mb >= task memory_mb, for both sides.
- A task ranks workers by estimated completion time (input download + rtt + tokens / speed),
  shortest first; ties by worker index, then worker_id.
- A worker ranks tasks by priority, highest first; within a level by how well the task's size
  suits this worker: |ln(completion_s(task, worker) / target_s)|, smallest first, where target_s
  is the median completion_s over every (task, worker) pair of this cycle. A fast worker on a
  good link thus prefers large tasks, a slow one or one behind a slow link prefers small tasks
  and tasks with small inputs, so all workers finish their tasks after about the same time; a
  task twice too long counts as much against it as one half too short. Ties by seq, then task_id.

Tasks propose (Gale & Shapley 1962), which gives the task-optimal stable matching. What holds:
no blocking pair (an acceptable task and worker that each prefer the other to what they got,
being unmatched counting as worst); hence maximality (no idle worker left free while a pending
task that fits it stays unmatched); and, by the rural hospitals theorem, the same tasks and
workers are matched in every stable matching, so *which* tasks run this cycle follows the
workers' order (priority first) and *where* each one runs follows the tasks' (fastest finish).

Cost: O(tasks x workers) for the estimates and proposals (every task left pending has been
refused by each worker it fits), plus a sort per task. 500 tasks x 200 workers: about 0.2 s of
pure Python on one core of the 2-core development machine.
"""

from __future__ import annotations

import math
from statistics import median
from typing import ClassVar, Sequence

from .base import TaskView, WorkerView
from .estimate import completion_s, estimate_workers


class Preferences:
    """Both sides' orders for one cycle, indexed by position in the given sequences."""

    def __init__(self, tasks: Sequence[TaskView], workers: Sequence[WorkerView]):
        self.tasks, self.workers = tasks, workers
        estimates = estimate_workers(workers)
        self.seconds = [[completion_s(t, e) for e in estimates] for t in tasks]
        self.log_target = math.log(median(s for row in self.seconds for s in row))

    def acceptable(self, task: int, worker: int) -> bool:
        return self.workers[worker].memory_mb >= self.tasks[task].memory_mb

    def task_key(self, task: int, worker: int) -> tuple:
        """Smaller = `task` prefers `worker` more."""
        w = self.workers[worker]
        return (self.seconds[task][worker], w.index, w.worker_id)

    def worker_key(self, worker: int, task: int) -> tuple:
        """Smaller = `worker` prefers `task` more."""
        t = self.tasks[task]
        mismatch = abs(math.log(self.seconds[task][worker]) - self.log_target)
        return (-t.priority, mismatch, t.seq, t.task_id)


class GaleShapleyScheduler:
    name: ClassVar[str] = "gale-shapley"

    def assign(self, tasks: Sequence[TaskView], workers: Sequence[WorkerView]) -> dict[str, str]:
        if not tasks or not workers:
            return {}
        prefs = Preferences(tasks, workers)
        # Each task's acceptable workers, worst first, so pop() yields its next proposal.
        to_propose = [
            sorted((j for j in range(len(workers)) if prefs.acceptable(i, j)),
                   key=lambda j: prefs.task_key(i, j), reverse=True)
            for i in range(len(tasks))
        ]
        held: dict[int, tuple[int, tuple]] = {}  # worker -> (task it holds, its key for that task)
        proposers = list(range(len(tasks)))
        while proposers:
            task = proposers.pop()
            if not to_propose[task]:
                continue  # rejected by every acceptable worker: stays pending
            worker = to_propose[task].pop()
            key = prefs.worker_key(worker, task)
            rival = held.get(worker)
            if rival is None or key < rival[1]:
                held[worker] = (task, key)
                if rival is not None:
                    proposers.append(rival[0])
            else:
                proposers.append(task)
        return {workers[w].worker_id: tasks[t].task_id for w, (t, _) in held.items()}
