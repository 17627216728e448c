"""The greedy core shared by fifo, priority and capability: they differ only in two orders.

Each task, in the scheduler's task order, takes the first still-free worker, in the scheduler's
worker order, whose memory fits it; a task that fits no free worker is skipped. The result is
maximal: a worker left free fits none of the tasks left pending, since each of those tasks found
no free fitting worker while that worker was still free.
"""

from __future__ import annotations

from typing import Sequence

from .base import TaskView, WorkerView


def first_fit(tasks: Sequence[TaskView], workers: Sequence[WorkerView]) -> dict[str, str]:
    """{worker_id: task_id} for tasks and workers already in the scheduler's order. O(tasks x workers)."""
    free = list(workers)
    assignment: dict[str, str] = {}
    for task in tasks:
        if not free:
            break
        for position, worker in enumerate(free):
            if worker.memory_mb >= task.memory_mb:
                assignment[worker.worker_id] = task.task_id
                del free[position]
                break
    return assignment
