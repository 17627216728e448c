"""The run's tasks, generated deterministically from the config and its seed.

Basic mode: `tasks.count` synthetic tasks whose size, priority, memory need and input/output
sizes are drawn uniformly from the `tasks:` ranges. ML mode: one `shard` task per worker
(shard i of n); the worker trains on that shard until the parameter server ends the run.

A synthetic task's input is pseudo-random bytes derived from (seed, task id); its result is
SHAKE-256 of the input, `output_kb` KiB long. The controller recomputes it on completion, so a
completion proves the worker really downloaded that input and uploaded the full result.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..config import RunConfig


@dataclass(frozen=True)
class TaskSpec:
    task_id: str
    seq: int
    kind: str  # 'synthetic' | 'shard'
    tokens: int
    priority: int
    memory_mb: int
    input_kb: int
    output_kb: int
    shard: int | None = None  # ML: which shard of the training data (of workers.count)


def generate_tasks(config: "RunConfig") -> list[TaskSpec]:
    """The same config and seed give the same tasks, in the same order."""
    if config.mode == "ml":
        return [TaskSpec(f"shard-{i}", i, "shard", 0, 0, 0, 0, 0, shard=i) for i in range(config.workers.count)]
    spec = config.tasks
    rng = random.Random(config.seed)
    tasks = []
    for i in range(spec.count):
        tasks.append(TaskSpec(
            task_id=f"task-{i:05d}",
            seq=i,
            kind="synthetic",
            tokens=rng.randint(*spec.tokens),
            priority=rng.randrange(spec.priorities),
            memory_mb=rng.randint(*spec.memory_mb),
            input_kb=rng.randint(*spec.input_kb),
            output_kb=rng.randint(*spec.output_kb),
        ))
    return tasks


def task_input(seed: int, task_id: str, input_kb: int) -> bytes:
    return random.Random(f"{seed}:{task_id}").randbytes(input_kb * 1024)


def task_result(data: bytes, output_kb: int) -> bytes:
    """What a worker uploads for an input: the 'computation' both sides can check."""
    return hashlib.shake_256(data).digest(output_kb * 1024)
