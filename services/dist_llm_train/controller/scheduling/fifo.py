"""`fifo`, the baseline: the oldest task goes to the longest-idle worker whose memory fits it.

Tasks in creation order (seq); workers by idle_since, oldest first (ties: index, then id).
"""

from __future__ import annotations

from typing import ClassVar, Sequence

from .base import TaskView, WorkerView
from .first_fit import first_fit


def longest_idle_first(workers: Sequence[WorkerView]) -> list[WorkerView]:
    return sorted(workers, key=lambda w: (w.idle_since, w.index, w.worker_id))


class FifoScheduler:
    name: ClassVar[str] = "fifo"

    def assign(self, tasks: Sequence[TaskView], workers: Sequence[WorkerView]) -> dict[str, str]:
        oldest_first = sorted(tasks, key=lambda t: (t.seq, t.task_id))
        return first_fit(oldest_first, longest_idle_first(workers))
