"""`capability`: the largest tasks go to the fastest workers whose memory fits them.

Score of a worker = its estimated compute speed in tokens/s (estimate.estimate_workers):
    score = ewma_tokens_per_sec                       when the worker has reported telemetry,
          = capacity * median(ewma / capacity over the measured idle workers)   otherwise,
          = capacity * NOMINAL_TOKENS_PER_SEC          when no idle worker has reported yet.
So telemetry overrules a declaration: a worker that declared capacity 2.0 but measures 30k tokens/s
scores below one that declared 1.0 and measures 40k. The link is not part of the score (that is
what gale-shapley adds).

Tasks by tokens, largest first (ties: seq, then id); workers by score, highest first (ties: index,
then id); then first fit on memory. Longest-first onto the fastest shortens the tail of a run
(LPT); small tasks wait while larger ones are pending.
"""

from __future__ import annotations

from typing import ClassVar, Sequence

from .base import TaskView, WorkerView
from .estimate import estimate_workers
from .first_fit import first_fit


class CapabilityScheduler:
    name: ClassVar[str] = "capability"

    def assign(self, tasks: Sequence[TaskView], workers: Sequence[WorkerView]) -> dict[str, str]:
        scored = zip(workers, estimate_workers(workers))
        fastest_first = [w for w, e in sorted(scored, key=lambda we: (-we[1].tokens_per_sec, we[0].index, we[0].worker_id))]
        largest_first = sorted(tasks, key=lambda t: (-t.tokens, t.seq, t.task_id))
        return first_fit(largest_first, fastest_first)
