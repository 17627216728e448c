"""Open routes: /healthz, /status (JSON for people and tests), /metrics (Prometheus text)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import PlainTextResponse

from ..context import Controller
from ..deps import Ctl
from ..runstate import iso

router = APIRouter(tags=["status"])


@router.get("/healthz")
async def healthz(ctl: Ctl) -> dict[str, Any]:
    """The controller answers and its database is open (compose's healthcheck)."""
    return {"ok": True, "run_state": ctl.run.state}


@router.get("/status")
async def status(ctl: Ctl) -> dict[str, Any]:
    """The run, its tasks, every worker incarnation, the last link and PS reports."""
    return build_status(ctl)


@router.get("/metrics", response_class=PlainTextResponse)
async def metrics(ctl: Ctl) -> PlainTextResponse:
    tasks = ctl.store.task_counts()
    requeues = tasks.pop("requeues")
    gauges = [
        ("dlt_tasks", "tasks of the run by state", "state", tasks),
        ("dlt_task_requeues", "leases revoked in this run (tasks returned to pending)", None, {"": requeues}),
        ("dlt_workers", "worker incarnations by status (busy: alive and holding a task)", "status",
         ctl.store.worker_counts()),
        ("dlt_run", "1 for the run's current state", "state", {ctl.run.state: 1}),
    ]
    return PlainTextResponse(ctl.metrics.render(gauges), media_type="text/plain; version=0.0.4")


def build_status(ctl: Controller) -> dict[str, Any]:
    meta = ctl.run.meta
    now = ctl.clock()
    started = meta["started_at"]
    links = ctl.store.report("links")
    ps = ctl.store.report("ps")
    tasks = ctl.store.task_counts()
    return {
        "run": {
            "id": meta["run_id"], "state": meta["state"], "mode": meta["mode"], "config": ctl.config.name,
            "digest": meta["config_digest"], "scheduler": ctl.config.controller.scheduler,
            "created_at": iso(meta["created_at"]), "started_at": iso(started), "ended_at": iso(meta["ended_at"]),
            "elapsed_s": None if started is None else round((meta["ended_at"] or now) - started, 3),
            "reason": meta["reason"], "degraded": meta["degraded_reason"], "row_written": bool(meta["row_written"]),
        },
        "tasks": {"total": tasks["pending"] + tasks["assigned"] + tasks["completed"], **tasks},
        "workers": [worker_row(w, ctl, now) for w in ctl.store.workers()],
        "links": None if links is None else {
            **{k: links[0].get(k) for k in ("profile", "backend", "seed", "ready", "healthy", "problems", "probe",
                                             "failed", "missing", "tcp_cc", "emulation")},
            "containers": links[0].get("links"),  # per container: its link, TCP in force, its delayer's figures
            "age_s": round(now - links[1], 3)},
        "ps": None if ps is None else {**ps[0], "age_s": round(now - ps[1], 3)},
    }


def worker_row(w, ctl: Controller, now: float) -> dict[str, Any]:
    heard = ctl.liveness.heard.get(w["worker_id"])
    return {
        "worker_id": w["worker_id"], "name": w["name"], "index": w["idx"], "status": w["status"],
        "task": w["task_id"], "capacity": w["capacity"], "memory_mb": w["memory_mb"],
        "ewma_tokens_per_sec": w["ewma_tokens_per_sec"], "ewma_step_time_s": w["ewma_step_time_s"],
        "rtt_ms": w["rtt_ms"], "down_mbit": w["down_mbit"], "epoch": w["epoch"], "batch": w["batch"],
        "compute_utilization": w["compute_utilization"], "staleness": w["staleness"],
        "silent_s": None if heard is None else round(now - heard, 3),
    }
