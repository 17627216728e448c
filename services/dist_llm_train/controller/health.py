"""Failure detector and the run's clocks, checked a few times per heartbeat timeout.

A worker silent for more than two heartbeat intervals is logged once as missing heartbeats; one
silent for heartbeat_timeout_s is declared dead, and its task returns to pending with its lease
revoked in the same transaction (store.mark_dead), so it is requeued exactly once and a late
completion from it gets 409. Who was heard when is kept in memory only: a restarted controller
starts every live worker's clock at its own start, which gives each one fresh timeout.

The same pass ends a run that outlived timeout_s, and marks it degraded when the netem sidecar
(LINK_GATE=1 only) has been silent for SIDECAR_SILENCE_S while the run is running.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .context import Controller

SIDECAR_SILENCE_S = 15.0


class Liveness:
    def __init__(self) -> None:
        self.heard: dict[str, float] = {}  # worker_id -> last heartbeat (controller clock)
        self.missing: set[str] = set()  # workers already logged as missing heartbeats
        self.sidecar_heard = 0.0  # last POST /links (the app sets it to its start time)

    def seen(self, worker_id: str, now: float) -> None:
        self.heard[worker_id] = now
        self.missing.discard(worker_id)

    def forget(self, worker_id: str) -> None:
        self.heard.pop(worker_id, None)
        self.missing.discard(worker_id)


GATE_TIMEOUT_S = 600.0  # longest wait for the sidecar's first "ready" (its probe included)


def check(ctl: "Controller", now: float) -> None:
    """One pass: judge every live worker, then the run's timeout and the sidecar's silence.
    Once the run has ended nobody is judged: workers leave when told to stop."""
    run = ctl.run
    if run.ended:
        return
    cfg = ctl.config.controller
    for worker_id in ctl.store.alive_worker_ids():
        # A live worker not heard by this process yet (it just restarted) starts its clock now.
        silence = now - ctl.liveness.heard.setdefault(worker_id, now)
        if silence > cfg.heartbeat_timeout_s:
            declare_dead(ctl, worker_id, f"no heartbeat for {silence:.1f} s", now)
        elif silence > 2 * cfg.heartbeat_interval_s and worker_id not in ctl.liveness.missing:
            ctl.liveness.missing.add(worker_id)
            ctl.metrics.events["heartbeats_missed"] += 1
            ctl.log.info("worker %s missed heartbeats (silent %.1f s)", worker_id, silence)

    # timeout_s is the run's own budget, counted from its start; the wait for the links (a probe
    # of 20-40 s, longer under satellite) has a budget of its own and ends the run as failed.
    if run.state == "waiting" and now - run.meta["created_at"] > GATE_TIMEOUT_S:
        with ctl.store.transaction():
            run.end("failed", f"the netem sidecar never reported the links ready in {GATE_TIMEOUT_S:g} s")
        run.write_row_once()
        return
    if run.state == "running" and now - run.meta["started_at"] > ctl.config.timeout_s:
        with ctl.store.transaction():
            run.end("timeout", f"timeout_s {ctl.config.timeout_s:g} s reached")
        run.write_row_once()
        return
    silence = now - ctl.liveness.sidecar_heard
    if ctl.settings.link_gate and run.state == "running" and silence > SIDECAR_SILENCE_S:
        run.degrade(f"netem sidecar silent for {silence:.0f} s while running")


def declare_dead(ctl: "Controller", worker_id: str, why: str, now: float) -> None:
    changed, task_id = ctl.store.mark_dead(worker_id, now)
    ctl.liveness.forget(worker_id)
    if not changed:
        return
    ctl.metrics.events["workers_dead"] += 1
    ctl.log.info("worker %s declared dead: %s", worker_id, why)
    if task_id:
        note_requeue(ctl, task_id, worker_id, "dead")


def note_requeue(ctl: "Controller", task_id: str, worker_id: str, why: str) -> None:
    ctl.metrics.events["requeues"] += 1
    ctl.log.info("task %s requeued (its worker %s is %s)", task_id, worker_id, why)


async def watch(ctl: "Controller") -> None:
    """Run check() until cancelled; an error in one pass is logged and the next pass runs."""
    period = min(1.0, max(0.05, ctl.config.controller.heartbeat_timeout_s / 10))
    while True:
        await asyncio.sleep(period)
        try:
            check(ctl, ctl.clock())
        except Exception:
            ctl.log.exception("failure detector pass failed")
