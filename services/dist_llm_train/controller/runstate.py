"""The run's lifecycle and its result row.

    waiting --(links ready, or LINK_GATE=0)--> running --> finished | timeout | stopped | failed

The run lives in the store, so a restarted controller resumes it: same config digest -> the run
in the database goes on (whatever its state); another digest -> a fresh run replaces it.
When the run ends the controller writes its row and provenance once (results.write_run) and
records that it did; a controller killed between the end and the write writes them on restart.

Row status: the end state, except that a finished run during which the links were unhealthy
(the sidecar said so, or fell silent), or whose delayers released packets later than the
tolerance of netem/README.md or lost packets the preset did not ask for (the sidecar's
`emulation` summary, netem/lateness.py), is `degraded`; the reason column says why.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import secrets
import socket
import sqlite3
import sys
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from .. import __version__, results
from ..config import RunConfig
from ..settings import Settings
from .store import Store
from .tasks import generate_tasks

END_STATES = ("finished", "timeout", "stopped", "failed")
TCP_CC_FILE = Path("/proc/sys/net/ipv4/tcp_congestion_control")
VERSIONED = ("fastapi", "starlette", "pydantic", "uvicorn", "httpx", "PyYAML", "numpy", "torch", "pyzmq")


def iso(t: float | None) -> str | None:
    return None if t is None else datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="seconds")


class Run:
    def __init__(self, store: Store, config: RunConfig, settings: Settings, clock: Callable[[], float],
                 log: logging.Logger):
        self.store, self.config, self.settings, self.clock, self.log = store, config, settings, clock, log

    @property
    def meta(self) -> dict[str, Any]:
        # Read each time (one primary-key row): the database stays the only truth.
        meta = self.store.load_run()
        assert meta is not None, "begin() creates the run"
        return meta

    @property
    def state(self) -> str:
        return self.store.run_state()

    @property
    def ended(self) -> bool:
        return self.state in END_STATES

    def begin(self) -> None:
        """Resume the run in the database if it has this config, else create a fresh one."""
        digest = self.config.digest()
        existing = self.store.load_run()
        if existing and existing["config_digest"] == digest:
            self.log.info("resumed run %s (state %s)", existing["run_id"], existing["state"])
            if not self.settings.link_gate:
                self.start("LINK_GATE=0: no sidecar to wait for")
            self.write_row_once()
            return
        if existing:
            self.log.info("database held run %s of another config (digest %s, now %s): starting afresh",
                          existing["run_id"], existing["config_digest"], digest)
        now = self.clock()
        stamp = datetime.fromtimestamp(now, timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        run_id = f"{stamp}-{self.config.name}-{secrets.token_hex(3)}"
        state = "waiting" if self.settings.link_gate else "running"
        tasks = generate_tasks(self.config)
        self.store.create_run(run_id, digest, self.config.model_dump(mode="json"), state, tasks, now)
        self.log.info("run %s created: mode %s, %d tasks, scheduler %s, state %s%s", run_id, self.config.mode,
                      len(tasks), self.config.controller.scheduler, state,
                      " (until the netem sidecar reports the links ready)" if state == "waiting" else "")

    def start(self, why: str) -> None:
        if self.state == "waiting":
            self.store.update_run(state="running", started_at=self.clock())
            self.log.info("run %s: waiting -> running (%s)", self.meta["run_id"], why)

    def end(self, state: str, reason: str) -> bool:
        """Move to an end state (False if the run had already ended). Call write_row_once()
        after the transaction that ended it commits."""
        assert state in END_STATES
        previous = self.state
        if previous in END_STATES:
            return False
        self.store.update_run(state=state, ended_at=self.clock(), reason=reason)
        self.log.info("run %s: %s -> %s (%s)", self.meta["run_id"], previous, state, reason)
        return True

    def degrade(self, reason: str) -> None:
        """Record that the links were unhealthy; the first reason is kept."""
        if self.ended or self.meta["degraded_reason"]:
            return
        self.store.update_run(degraded_reason=reason)
        self.log.warning("run %s degraded: %s", self.meta["run_id"], reason)

    def write_row_once(self) -> Path | None:
        meta = self.meta
        if meta["state"] not in END_STATES or meta["row_written"]:
            return None
        try:
            path = results.write_run(self.settings.runs_dir, meta["run_id"], self.row(), self.provenance())
        except OSError as exc:  # keep serving; a restart tries again
            self.log.error("run %s: could not write its row under %s: %s", meta["run_id"], self.settings.runs_dir, exc)
            return None
        self.store.update_run(row_written=1)
        self.log.info("run %s: row written to %s", meta["run_id"], path / "row.csv")
        return path

    def row(self) -> dict[str, Any]:
        meta, config = self.meta, self.config
        links = self._report("links")
        ps = self._report("ps")
        probe = links.get("probe") or {}
        counts = self.store.task_counts()
        latest = latest_incarnations(self.store.workers())
        ml = config.ml
        emulation = links.get("emulation") or {}
        worker_interfaces = ((links.get("interfaces") or {}).get("roles") or {}).get("worker") or {}
        status = meta["state"]
        reason = meta["reason"]
        if meta["degraded_reason"]:
            status = "degraded" if status == "finished" else status
            reason = f"{reason}; links degraded: {meta['degraded_reason']}"
        missing = self._report("links_at_start").get("missing")
        if missing:
            reason = (f"{reason}; started with {config.workers.count - len(missing)} of {config.workers.count} "
                      f"workers (no running container after workers.start_wait_s: {', '.join(missing)})")
        if emulation.get("within_tolerance") is False:
            status = "degraded" if status == "finished" else status
            reason = f"{reason}; emulation out of tolerance: {'; '.join(emulation.get('problems') or [])}"
        started = meta["started_at"] or meta["created_at"]
        return {
            "config": config.name,
            "mode": config.mode,
            # the preset the run started under; netem_profile: the latest (PROFILE may change mid-run)
            "profile": self._report("links_at_start").get("profile", self.settings.profile),
            "netem_profile": links.get("profile"),
            "netem_seed": links.get("seed"),
            "window": ps.get("window"),
            "repeat": self.settings.repeat,
            "duration_s": (meta["ended_at"] or self.clock()) - started,
            "num_workers": len(latest),
            "num_completed_tasks": counts["completed"],
            "num_pending_tasks": counts["pending"] + counts["assigned"],
            "mean_ewma_tokens_per_sec": mean(w["ewma_tokens_per_sec"] for w in latest),
            "mean_ewma_step_time_s": mean(w["ewma_step_time_s"] for w in latest),
            "status": status,
            "backend": links.get("backend"),
            # the sidecar's report; without a sidecar (local processes) this namespace's, which they share
            "tcp_cc": links.get("tcp_cc") or (None if self.settings.link_gate else own_congestion_control()),
            "measured_rtt_ms": probe.get("rtt_ms"),
            "measured_loss_pct": probe.get("loss_pct"),
            "measured_mbit": probe.get("mbit"),
            "emulation_late_p99_ms": emulation.get("late_p99_ms"),
            "emulation_drops": emulation.get("drops"),
            "updates_accepted": ps.get("updates_accepted"),
            "updates_rejected": ps.get("updates_rejected"),
            "mean_staleness": ps.get("mean_staleness"),
            # basic mode: what the controller itself served and accepted; ML: the PS's counts
            "bytes_up": ps.get("bytes_up") if ml else meta["bytes_received"],
            "bytes_down": ps.get("bytes_down") if ml else meta["bytes_served"],
            # every worker container's eth0 since the run started, read by the sidecar (netem/counters.py)
            "iface_bytes_up": worker_interfaces.get("tx_bytes"),
            "iface_bytes_down": worker_interfaces.get("rx_bytes"),
            "compute_utilization": mean(w["compute_utilization"] for w in latest),
            "initial_val_loss": ps.get("initial_val_loss"),
            "final_val_loss": ps.get("final_val_loss"),
            "final_train_loss": ps.get("final_train_loss"),
            "time_to_target_s": ps.get("time_to_target_s"),
            "run_id": meta["run_id"],
            "config_hash": meta["config_digest"],
            "scheduler": config.controller.scheduler,
            "trainer": ml.trainer if ml else None,
            "protocol": ml.staleness.protocol if ml else None,
            "codec": ml.compression.label if ml else None,
            "aggregation": ml.aggregation.rule if ml else None,
            "reason": reason,
            "started_at": iso(started),
            "seed": config.seed,
            "target_val_loss": ml.budget.target_val_loss if ml else None,
            "max_tokens": ml.budget.max_tokens if ml else None,
            "tokens_trained": ps.get("tokens_trained"),
            "bytes_to_target": ps.get("bytes_to_target"),
        }

    def provenance(self) -> dict[str, Any]:
        meta = self.meta
        settings = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self.settings).items()
                    if not k.endswith("_token")}  # the run token and the role credentials
        return {
            "run_id": meta["run_id"],
            "config": json.loads(meta["config_json"]),
            "config_digest": meta["config_digest"],
            "settings": settings,
            "versions": {"dist_llm_train": __version__, "python": sys.version.split()[0],
                         "sqlite": sqlite3.sqlite_version, **package_versions(VERSIONED)},
            "image_id": self.settings.image_id,
            "hostname": socket.gethostname(),
            "timestamps": {k: iso(meta[k]) for k in ("created_at", "started_at", "ended_at")},
            "tasks": self.store.task_counts(),
            "workers": [{k: w[k] for k in ("worker_id", "name", "idx", "status", "ewma_tokens_per_sec",
                                           "ewma_step_time_s", "rtt_ms", "down_mbit", "compute_utilization")}
                        for w in self.store.workers()],
            "links_report": self._report("links", with_time=True) or None,
            "ps_report": self._report("ps", with_time=True) or None,
        }

    def _report(self, kind: str, with_time: bool = False) -> dict[str, Any]:
        found = self.store.report(kind)
        if found is None:
            return {}
        body, received = found
        return {**body, "received_at": iso(received)} if with_time else body


def own_congestion_control() -> str | None:
    try:
        return TCP_CC_FILE.read_text().strip() or None
    except OSError:
        return None


def latest_incarnations(workers: list) -> list:
    """The newest record of each worker name (a restarted worker counts once)."""
    newest: dict[str, Any] = {}
    for w in workers:
        if w["name"] not in newest or w["incarnation"] > newest[w["name"]]["incarnation"]:
            newest[w["name"]] = w
    return list(newest.values())


def mean(values) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


def package_versions(names: tuple[str, ...]) -> dict[str, str | None]:
    found = {}
    for name in names:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return found
