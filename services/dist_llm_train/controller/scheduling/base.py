"""The scheduler plug-in point: pending tasks x idle workers -> assignments.

A scheduler is a pure function of two snapshots taken by the controller in one transaction;
it touches no database, clock or network, so it is tested with hand-built views.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Protocol, Sequence


@dataclass(frozen=True)
class TaskView:
    task_id: str
    seq: int  # creation order, 0-based; the FIFO order
    tokens: int  # work in tokens
    priority: int  # higher runs first under `priority`
    memory_mb: int  # memory the task needs
    input_kb: int  # bytes the worker must download before computing
    output_kb: int  # bytes the worker uploads when done


@dataclass(frozen=True)
class WorkerView:
    worker_id: str
    index: int  # compose container number - 1
    capacity: float  # declared at registration (relative units, 1.0 = nominal)
    memory_mb: int  # declared at registration
    idle_since: float  # seconds (controller clock) since when the worker waits for work
    ewma_tokens_per_sec: float | None = None  # measured compute speed; None before any telemetry
    rtt_ms: float | None = None  # measured round trip to the controller (EWMA of heartbeats)
    down_mbit: float | None = None  # measured download rate of task inputs (EWMA)


class Scheduler(Protocol):
    """Choose which idle worker gets which pending task in one scheduling cycle.

    `assign` returns {worker_id: task_id}. Each worker appears at most once, each task at most
    once, and only ids from the arguments appear. A worker whose memory_mb is below a task's
    memory_mb never gets that task. Leaving a worker without a task is allowed (nothing fits, or
    waiting for a better worker is the policy); raising is not: a scheduler that cannot decide
    returns {}.
    """

    name: ClassVar[str]

    def assign(self, tasks: Sequence[TaskView], workers: Sequence[WorkerView]) -> dict[str, str]: ...
