"""`priority`: the highest priority first, FIFO (seq) within a level; workers as under fifo.

A steady stream of high-priority tasks starves low ones; that is the policy, and the run's
task list is finite, so every task runs in the end.
"""

from __future__ import annotations

from typing import ClassVar, Sequence

from .base import TaskView, WorkerView
from .fifo import longest_idle_first
from .first_fit import first_fit


class PriorityScheduler:
    name: ClassVar[str] = "priority"

    def assign(self, tasks: Sequence[TaskView], workers: Sequence[WorkerView]) -> dict[str, str]:
        by_priority = sorted(tasks, key=lambda t: (-t.priority, t.seq, t.task_id))
        return first_fit(by_priority, longest_idle_first(workers))
