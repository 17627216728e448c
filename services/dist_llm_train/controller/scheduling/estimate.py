"""What a scheduler believes about a worker's speed and link, and what a task costs on it.

Cost model (one task on one worker), in seconds:

    completion_s = input_kb * 1024 * 8 / (down_mbit * 1e6)   # download the input (KiB -> bit, Mbit/s -> bit/s)
                 + rtt_ms / 1000                              # the request round trip that hands the task over
                 + tokens / tokens_per_sec                    # compute

The upload of the result is left out: no uplink rate is measured per worker, and the result is
the smaller transfer (8-64 KiB against 32-256 KiB of input in the default basic config).

Speed in tokens/s: the measured EWMA when the worker has reported any, else its declared
capacity times the tokens/s per unit of capacity that the measured idle workers show (median of
ewma / capacity). A measurement therefore always overrules a declaration, and an unmeasured
worker is put on the same scale as the measured ones instead of on a guessed absolute one.
Link: the measured down_mbit and rtt_ms, else the median of the measured idle workers ("a
typical link until we know better"). Only when no idle worker has measured a figure does a
constant stand in: NOMINAL_TOKENS_PER_SEC (the basic-mode speed of a worker at speed 1.0),
DEFAULT_DOWN_MBIT, DEFAULT_RTT_MS.

A value that is missing, not finite, or out of range (speed or rate <= 0, rtt < 0) counts as
unmeasured, so a garbled telemetry figure never makes a scheduler divide by zero or raise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import median
from typing import Sequence

from .base import TaskView, WorkerView

NOMINAL_TOKENS_PER_SEC = 50_000.0  # per unit of declared capacity; workers.base_tokens_per_sec's default
DEFAULT_DOWN_MBIT = 100.0  # an unimpaired LAN link, before any worker has measured a download
DEFAULT_RTT_MS = 1.0  # a LAN round trip, before any worker has measured one
MIN_TOKENS_PER_SEC = 1.0  # floor for a worker declaring capacity <= 0: ranked last, never a division by 0
MIN_COMPLETION_S = 1e-6  # floor for a zero-size task on a zero-RTT link, so ratios and logs stay defined


@dataclass(frozen=True)
class WorkerEstimate:
    tokens_per_sec: float
    down_mbit: float
    rtt_ms: float


def _measured(value: float | None, allow_zero: bool = False) -> bool:
    return value is not None and math.isfinite(value) and (value >= 0 if allow_zero else value > 0)


def _typical(values: list[float], default: float) -> float:
    return median(values) if values else default


def _speed(worker: WorkerView, per_capacity: float) -> float:
    if _measured(worker.ewma_tokens_per_sec):
        return worker.ewma_tokens_per_sec
    if _measured(worker.capacity):
        return max(worker.capacity * per_capacity, MIN_TOKENS_PER_SEC)
    return MIN_TOKENS_PER_SEC


def estimate_workers(workers: Sequence[WorkerView]) -> list[WorkerEstimate]:
    """One estimate per worker, in the order given (see the module docstring for the rules)."""
    per_capacity = _typical(
        [w.ewma_tokens_per_sec / w.capacity for w in workers
         if _measured(w.ewma_tokens_per_sec) and _measured(w.capacity)],
        NOMINAL_TOKENS_PER_SEC,
    )
    down = _typical([w.down_mbit for w in workers if _measured(w.down_mbit)], DEFAULT_DOWN_MBIT)
    rtt = _typical([w.rtt_ms for w in workers if _measured(w.rtt_ms, allow_zero=True)], DEFAULT_RTT_MS)
    return [
        WorkerEstimate(
            tokens_per_sec=_speed(w, per_capacity),
            down_mbit=w.down_mbit if _measured(w.down_mbit) else down,
            rtt_ms=w.rtt_ms if _measured(w.rtt_ms, allow_zero=True) else rtt,
        )
        for w in workers
    ]


def completion_s(task: TaskView, worker: WorkerEstimate) -> float:
    """Estimated seconds from handing `task` to `worker` until its compute ends."""
    download_s = task.input_kb * 1024 * 8 / (worker.down_mbit * 1e6)
    seconds = download_s + worker.rtt_ms / 1000 + task.tokens / worker.tokens_per_sec
    return max(seconds, MIN_COMPLETION_S)
