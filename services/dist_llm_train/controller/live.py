"""What the live view (/ui) shows: one snapshot of the run, built at most every MIN_PERIOD_S however
many browsers watch, and the loss curve the PS writes, followed incrementally (curve_tail.py).

A snapshot is /status (routers/status.build_status, which carries each container's link, TCP in force
and delayer figures) plus what /status leaves out: the rest of the sidecar's report (any field it
adds), the run's configured codec, progress with an estimate of the time left, and the staleness
histogram once the PS wrote it.
Fields this module does not know pass through untouched, so the page shows them as they land.
"""

from __future__ import annotations

import json
import math
import time
from typing import Any, Callable

from ..config import RunConfig
from .context import Controller
from .curve_tail import CurveTail, read_staleness, run_dir
from .routers.status import build_status
from .runstate import END_STATES

MIN_PERIOD_S = 0.5  # at most two snapshots a second, shared by every viewer
LINKS_HIDDEN = ("links", "preset")  # in /status already (per container), or too large to be useful on the page


def clean(value: Any) -> Any:
    """JSON-safe copy: non-finite floats become None (a report's free-form fields may carry NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    return value


def progress(config: RunConfig, status: dict[str, Any]) -> dict[str, Any]:
    """How far the run is and an estimate of the time left, from the rate so far.

    basic: tasks completed of all; ML: tokens trained of `budget.max_tokens` (the PS's `tokens_trained`), or
    without a token budget PS versions of `budget.max_versions`. The run also ends at
    `timeout_s` (and an ML run at `budget.max_time_s`), both counted from its start, so the estimate
    is the soonest of the three; `bound` names it. An ML run with a target loss may end sooner."""
    run = status["run"]
    elapsed = run["elapsed_s"]
    if config.mode == "ml":
        budget = config.ml.budget
        if budget.max_tokens is not None:
            done, total, unit = (status["ps"] or {}).get("tokens_trained") or 0, budget.max_tokens, "tokens"
        else:
            done, total, unit = (status["ps"] or {}).get("version") or 0, budget.max_versions, "versions"
        limits = {"timeout_s": config.timeout_s, "budget.max_time_s": budget.max_time_s}
        note = f"sooner if the validation loss reaches {budget.target_val_loss:g}" if budget.target_val_loss else None
    else:
        done, total, unit = status["tasks"]["completed"], status["tasks"]["total"], "tasks"
        limits, note = {"timeout_s": config.timeout_s}, None
    out = {"unit": unit, "done": done, "total": total, "fraction": min(1.0, done / total) if total else None,
           "eta_s": None, "bound": None, "note": note}
    if run["state"] in END_STATES or run["state"] == "waiting" or not elapsed:
        return out
    candidates = {name: limit - elapsed for name, limit in limits.items()}
    if done > 0:
        candidates[f"rate so far ({unit})"] = (total - done) * elapsed / done
    bound = min(candidates, key=candidates.get)
    return {**out, "eta_s": round(max(0.0, candidates[bound]), 1), "bound": bound}


def run_codec(config: RunConfig) -> dict[str, Any] | None:
    """The run's configured compression (a worker row may later carry its own codec and ratio)."""
    if config.ml is None:
        return None
    c = config.ml.compression
    if c.policy == "adaptive":  # each worker's own choice is in codec_decisions.csv
        return {"codec": c.label, "ratio": None, "downlink": "adaptive"}
    return {"codec": c.codec, "ratio": c.ratio if c.codec == "topk" else None, "downlink": c.downlink}


class LiveFeed:
    def __init__(self, ctl: Controller):
        self.ctl = ctl
        self.cached: tuple[float, dict[str, Any], int] | None = None  # (built at, snapshot, its key)
        self.followed: tuple[str, CurveTail] | None = None  # (run id, the follower of its curve.csv)
        self.streams = 0  # open /ui/events connections
        self.stopping: Callable[[], bool] = lambda: False  # the server is shutting down (main.py tells)

    def snapshot(self) -> tuple[dict[str, Any], int]:
        """The run now (rebuilt at most every MIN_PERIOD_S) and a key that changes with it, so a
        stream sends only what changed."""
        now = time.monotonic()
        if self.cached is not None and now - self.cached[0] < MIN_PERIOD_S:
            return self.cached[1], self.cached[2]
        ctl = self.ctl
        status = build_status(ctl)
        links = ctl.store.report("links")
        folder = run_dir(ctl.settings.runs_dir, status["run"]["id"])
        snap = clean({
            "status": status,
            "links_report": None if links is None else {k: v for k, v in links[0].items() if k not in LINKS_HIDDEN},
            "codec": run_codec(ctl.config),
            "progress": progress(ctl.config, status),
            "staleness": None if folder is None else read_staleness(folder / "staleness.csv"),
            "ended": status["run"]["state"] in END_STATES,
        })
        tail = self.tail(status["run"]["id"])
        if tail is not None:
            tail.refresh()
        self.cached = (now, snap, hash(json.dumps(snap, sort_keys=True)))
        return snap, self.cached[2]

    def tail(self, run_id: str) -> CurveTail | None:
        """The follower of this run's curve (ML runs only)."""
        if self.ctl.config.mode != "ml":
            return None
        if self.followed is None or self.followed[0] != run_id:
            folder = run_dir(self.ctl.settings.runs_dir, run_id)
            if folder is None:
                return None
            self.followed = (run_id, CurveTail(folder / "curve.csv"))
        return self.followed[1]

    def curve(self, run_id: str, since: int) -> dict[str, Any]:
        tail = self.tail(run_id)
        if tail is None:
            return {"rows": [], "last_seq": 0, "skipped": 0}
        return {"rows": tail.since(since), "last_seq": tail.last_seq, "skipped": tail.skipped}

    def update(self, since: int) -> dict[str, Any]:
        """A snapshot and the curve rows after `since`: the body of /ui/state and of each event."""
        snap, _ = self.snapshot()
        return {**snap, "curve": self.curve(snap["status"]["run"]["id"], since)}
