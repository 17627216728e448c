"""What the PS tells the world: the report to the controller, the curve files, throttled log lines.

Report: `POST {CONTROLLER_URL}/ps/report` with the body of `controller.models.PsReportIn` (REPORT_FIELDS),
about every `interval_s` from a thread of its own (the controller's latency never stalls the data plane) and
once more, synchronously and retried, at the end (`done: true`).

Curve files in `runs/<run_id>/`:
    curve.csv      t_s, version, train_loss, val_loss, val_set, updates_accepted, updates_rejected,
                   mean_staleness, bytes_up, bytes_down, tokens: one row per applied version (every `stride`-th
                   when a budget allows more than MAX_CURVE_ROWS versions; always the evaluated ones), counters
                   cumulative. Which loss a point is: `train_loss` on every row is the mean training loss the
                   workers sent with the updates of that step (each computed on its own batch, before the step);
                   `val_loss` only on evaluated rows, on the validation set `val_set` names: `slice` (the fixed
                   slice evaluated along the run) or `final` (the final evaluation's set, one row at the end).
                   An evaluated row is held back until its loss is known, so rows stay in version order although
                   evaluation runs in another thread.
    staleness.csv  staleness, count: every push with a valid base version, accepted or refused.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any, Callable

from ..results import atomic_write

REPORT_FIELDS = ("version", "updates_accepted", "updates_rejected", "updates_refused", "wire_errors",
                 "mean_staleness", "bytes_up", "bytes_down", "initial_val_loss", "final_val_loss",
                 "final_train_loss", "time_to_target_s", "bytes_to_target", "tokens_trained", "window", "done",
                 "reason")
CURVE_COLUMNS = ("t_s", "version", "train_loss", "val_loss", "val_set", "updates_accepted", "updates_rejected",
                 "mean_staleness", "bytes_up", "bytes_down", "tokens")
MAX_CURVE_ROWS = 2000
END_STATES = ("finished", "timeout", "stopped", "failed")  # the controller's run states after the end


class Reporter:
    """Posts the latest published report every `interval_s` from a daemon thread, and reads the run's state
    at the controller (`run_state()`), so the PS learns of a run the controller ended (stopped, timed out).

    `post(body)` and `run_state()` raise on failure; a failed call is logged (throttled) and the next one goes on."""

    def __init__(self, post: Callable[[dict[str, Any]], None], log: logging.Logger, interval_s: float = 2.0,
                 run_state: Callable[[], str] | None = None):
        self.post, self.log, self.interval_s, self.run_state = post, log, interval_s, run_state
        self.latest: dict[str, Any] | None = None
        self.controller_state: str | None = None  # the last state the controller told
        self.stopping = threading.Event()
        self.throttle = LogThrottle(log, 30.0)
        self.thread = threading.Thread(target=self._loop, name="ps-report", daemon=True)
        self.thread.start()

    def publish(self, body: dict[str, Any]) -> None:
        self.latest = body  # one reference swap: the thread reads a whole body or the previous one

    def _loop(self) -> None:
        sent = None
        while not self.stopping.wait(self.interval_s):
            body = self.latest
            try:
                if body is not None and body is not sent:
                    self.post(body)
                    sent = body
                if self.run_state is not None:
                    self.controller_state = self.run_state()
            except Exception as exc:  # the controller restarting, or gone: the final report retries
                self.throttle.warning("report", "report to the controller failed: %s", exc)

    def final(self, body: dict[str, Any]) -> bool:
        """Stop the thread and post `body` once, in this thread; False (logged) if it could not be posted."""
        self.stopping.set()
        self.thread.join(timeout=self.interval_s + 10)
        try:
            self.post(body)
            return True
        except Exception as exc:
            self.log.error("final report to the controller failed: %s", exc)
            return False


class Curve:
    """curve.csv and staleness.csv of one run (module docstring); appends, so a resumed PS continues the file."""

    def __init__(self, run_dir: Path, max_versions: int):
        self.run_dir = run_dir
        self.stride = max(1, math.ceil(max_versions / MAX_CURVE_ROWS))
        self.pending: deque[dict[str, Any]] = deque()
        self.awaiting: dict[tuple[int, str], dict[str, Any]] = {}  # (version, set) -> its row, until the loss comes
        run_dir.mkdir(parents=True, exist_ok=True)
        path = run_dir / "curve.csv"
        fresh = not path.exists() or path.stat().st_size == 0
        self.file = open(path, "a", newline="", buffering=1)
        self.writer = csv.DictWriter(self.file, fieldnames=CURVE_COLUMNS, lineterminator="\n")
        if fresh:
            self.writer.writeheader()

    def version(self, row: dict[str, Any], evaluated: str | None = None) -> None:
        """The row of a version just applied; `evaluated` (a validation set's name): it waits for `val_loss`."""
        if evaluated is None and row["version"] % self.stride:
            return
        row = {**row, "val_loss": None, "val_set": evaluated}
        self.pending.append(row)
        if evaluated is not None:
            self.awaiting[(row["version"], evaluated)] = row
        self._flush()

    def val_loss(self, version: int, on: str, loss: float) -> None:
        row = self.awaiting.pop((version, on), None)
        if row is not None:
            row["val_loss"] = loss
        self._flush()

    def _flush(self) -> None:
        while self.pending and (self.pending[0]["version"], self.pending[0]["val_set"]) not in self.awaiting:
            row = self.pending.popleft()
            self.writer.writerow({k: fmt(row.get(k)) for k in CURVE_COLUMNS})

    def staleness(self, counts: dict[int, int]) -> None:
        out = io.StringIO()
        out.write("staleness,count\n")
        for s in sorted(counts):
            out.write(f"{s},{counts[s]}\n")
        atomic_write(self.run_dir / "staleness.csv", out.getvalue().encode())

    def close(self) -> None:
        self.awaiting.clear()  # a loss that never came: write the rows without it
        self._flush()
        self.file.close()


def fmt(value: Any) -> str:
    if value is None:
        return ""
    return f"{value:.6g}" if isinstance(value, float) else str(value)


class LogThrottle:
    """At most one line per key every `interval_s`; the next line of that key says how many were left out,
    so a fast run's per-update events do not flood the log while every kind of event still shows."""

    def __init__(self, log: logging.Logger, interval_s: float = 1.0):
        self.log, self.interval_s = log, interval_s
        self.last: dict[str, float] = {}
        self.skipped: dict[str, int] = {}

    def _emit(self, level: int, key: str, msg: str, *args: Any) -> None:
        now = time.monotonic()
        if now - self.last.get(key, -math.inf) < self.interval_s:
            self.skipped[key] = self.skipped.get(key, 0) + 1
            return
        self.last[key] = now
        skipped = self.skipped.pop(key, 0)
        self.log.log(level, msg + (f" (+{skipped} similar)" if skipped else ""), *args)

    def info(self, key: str, msg: str, *args: Any) -> None:
        self._emit(logging.INFO, key, msg, *args)

    def warning(self, key: str, msg: str, *args: Any) -> None:
        self._emit(logging.WARNING, key, msg, *args)
