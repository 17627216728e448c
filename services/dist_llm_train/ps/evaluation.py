"""Validation loss of parameter snapshots, in a thread of its own.

An evaluation of the default model (4 batches of 32 x 128 bytes) takes about half a second of CPU; in the
PS's loop it would stall every worker for that long every `eval_every` versions. Here the loop hands over a
snapshot (the parameters of version v, never written again) and picks the loss up later; torch releases the
GIL while it computes, so the loop keeps serving. The batches are `ml.data.validation_batches`: the same
bytes at every evaluation and in every run with the same data settings.

A result is (version, loss, error): error None and the loss as computed (NaN or Inf when the model diverged),
or the exception's text and a NaN loss when the evaluation itself failed.
"""

from __future__ import annotations

import queue
import threading

from torch import Tensor, nn

from ..ml.data import Batch
from ..ml.train import evaluate, load_flat


class Evaluator:
    def __init__(self, model: nn.Module, batches: list[Batch]):
        self.model, self.batches = model, batches
        self.jobs: queue.Queue[tuple[int, Tensor] | None] = queue.Queue()
        self.done: queue.Queue[tuple[int, float, str | None]] = queue.Queue()
        self.submitted = 0
        self.finished = 0
        self.thread = threading.Thread(target=self._loop, name="ps-eval", daemon=True)
        self.thread.start()

    def submit(self, version: int, params: Tensor) -> None:
        """Evaluate `params` (a snapshot the caller will not change) as version `version`."""
        self.submitted += 1
        self.jobs.put((version, params))

    def results(self, wait: bool = False) -> list[tuple[int, float, str | None]]:
        """(version, loss, error) of the evaluations finished since the last call, in submission order; with
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
            version, params = job
            try:
                load_flat(self.model, params)
                self.done.put((version, evaluate(self.model, self.batches), None))
            except Exception as exc:  # never leave a waiting caller hanging
                self.done.put((version, float("nan"), f"{type(exc).__name__}: {exc}"[:500]))
