"""Validation loss of parameter snapshots, in a thread of its own.

Two fixed sets of validation batches (`ml.data.validation_batches`: the same bytes at every evaluation and in
every run with the same data settings): the `slice` (budget.eval_slice_batches) evaluated along the run, every
`eval_every` versions or `eval_every_s` seconds, and the `final` set (budget.eval_batches) evaluated once, on
the last version, for final_val_loss.

Cost model, measured on the 2-core development machine with the default model (938,240 parameters, batches of
32 x 128 bytes, one torch thread): one batch 130-170 ms, 4 batches about 500 ms; the PS applies a version every
~0.48 s (4 workers, async, loopback: 126 versions in 60 s). At the default schedule (every 10 versions or 5 s,
whichever first) a one-batch slice costs at most 0.17 s / min(10 x 0.48 s, 5 s) = 3.5 % of the PS's time; in
the PS's loop it would stall every worker for that long. Here the loop hands over a snapshot (the parameters of
version v, never written again) and picks the loss up later; torch releases the GIL while it computes, so the
loop keeps serving.

A result is (version, set, loss, error): error None and the loss as computed (NaN or Inf when the model
diverged), or the exception's text and a NaN loss when the evaluation itself failed.
"""

from __future__ import annotations

import queue
import threading

from torch import Tensor, nn

from ..ml.data import Batch
from ..ml.train import evaluate, load_flat

Result = tuple[int, str, float, "str | None"]  # version, set, loss, error


class Evaluator:
    def __init__(self, model: nn.Module, sets: dict[str, list[Batch]]):
        self.model, self.sets = model, sets
        self.jobs: queue.Queue[tuple[int, str, Tensor] | None] = queue.Queue()
        self.done: queue.Queue[Result] = queue.Queue()
        self.submitted = 0
        self.finished = 0
        self.thread = threading.Thread(target=self._loop, name="ps-eval", daemon=True)
        self.thread.start()

    def submit(self, version: int, params: Tensor, on: str = "slice") -> None:
        """Evaluate `params` (a snapshot the caller will not change) as version `version` on the set `on`."""
        if on not in self.sets:
            raise KeyError(f"no validation set {on!r}; the sets are {sorted(self.sets)}")
        self.submitted += 1
        self.jobs.put((version, on, params))

    def results(self, wait: bool = False) -> list[Result]:
        """(version, set, loss, error) of the evaluations finished since the last call, in submission order; with
        `wait`, all submitted ones."""
        out = []
        while self.finished < self.submitted:
            try:
                out.append(self.done.get(block=wait))
            except queue.Empty:
                break
            self.finished += 1
        return out

    def close(self) -> None:
        self.jobs.put(None)

    def _loop(self) -> None:
        while (job := self.jobs.get()) is not None:
            version, on, params = job
            try:
                load_flat(self.model, params)
                self.done.put((version, on, evaluate(self.model, self.sets[on]), None))
            except Exception as exc:  # never leave a waiting caller hanging
                self.done.put((version, on, float("nan"), f"{type(exc).__name__}: {exc}"[:500]))
