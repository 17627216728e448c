"""/workers: registration, heartbeats, telemetry, and asking for work."""

from __future__ import annotations

import secrets

from fastapi import APIRouter, HTTPException

from .. import dispatch, telemetry
from ..context import Controller
from ..deps import SECRET_HEADER, Authorized, Ctl, LiveWorker, WorkerSecret, hash_secret, matches
from ..health import note_requeue
from ..runstate import END_STATES
from ..models import (Empty, HeartbeatIn, HeartbeatOut, NextTaskIn, NextTaskOut, PsKey, RegisterIn, RegisterOut,
                      TaskOut, TelemetryIn)
from ..store import KeyInUse, NameHeld

router = APIRouter(prefix="/workers", tags=["workers"], dependencies=[Authorized])


@router.post("/register", response_model=RegisterOut)
async def register(body: RegisterIn, ctl: Ctl, proof: WorkerSecret) -> RegisterOut:
    """A new incarnation of the named worker, with a secret of its own (in the answer, once: send it as
    X-Worker-Secret on every worker route). A live older incarnation is retired and its task requeued when the
    call proves to be it (its secret as X-Worker-Secret); otherwise 409 until it is declared dead (silent for
    heartbeat_timeout_s). The answer carries the PS's key once the PS announced it. 409 when `data_key` is
    another live worker's."""
    now = ctl.clock()
    secret = secrets.token_urlsafe(32)
    try:
        worker_id, retired = ctl.store.register_worker(body.name, body.index, body.capacity, body.memory_mb, now,
                                                       hash_secret(secret), body.data_key, matches(proof))
    except KeyInUse as exc:
        raise HTTPException(409, str(exc)) from None
    except NameHeld as exc:
        ctl.log.info("registration as %s refused: %s is alive and the call did not prove to be it", body.name, exc)
        raise HTTPException(409, f"name {body.name!r} is held by the live incarnation {exc}: register with its "
                                 f"{SECRET_HEADER}, or once it is declared dead (silent for "
                                 f"heartbeat_timeout_s = {ctl.config.controller.heartbeat_timeout_s:g} s)") from None
    ctl.liveness.seen(worker_id, now)
    ctl.metrics.events["registrations"] += 1
    ctl.log.info("worker %s registered (index %d, capacity %g, memory %d MiB)",
                 worker_id, body.index, body.capacity, body.memory_mb)
    for old_id, task_id in retired:
        ctl.liveness.forget(old_id)
        ctl.log.info("worker %s replaced by %s", old_id, worker_id)
        if task_id:
            note_requeue(ctl, task_id, old_id, "replaced")
    return RegisterOut(worker_id=worker_id, run_id=ctl.run.meta["run_id"], mode=ctl.config.mode,
                       heartbeat_interval_s=ctl.config.controller.heartbeat_interval_s,
                       config=ctl.config.model_dump(mode="json"), ps_key=ps_key(ctl), secret=secret)


def ps_key(ctl: Controller) -> PsKey | None:
    saved = ctl.store.report("ps_key")
    return None if saved is None else PsKey(**saved[0])


@router.post("/{worker_id}/heartbeat", response_model=HeartbeatOut)
async def heartbeat(worker: LiveWorker, body: HeartbeatIn, ctl: Ctl) -> HeartbeatOut:
    """Proof of life; `stop` tells the worker the run is over. 410: declared dead, register again."""
    now = ctl.clock()
    ctl.liveness.seen(worker["worker_id"], now)
    if body.telemetry is not None:
        record(ctl, worker["worker_id"], body.telemetry, now)
    state = ctl.run.state
    return HeartbeatOut(run_state=state, alive=True, stop=state in END_STATES,
                        speed_factor=ctl.speed_factor(worker["idx"]))


@router.post("/{worker_id}/telemetry", response_model=Empty)
async def post_telemetry(worker: LiveWorker, body: TelemetryIn, ctl: Ctl) -> Empty:
    record(ctl, worker["worker_id"], body, ctl.clock())
    return Empty()


@router.post("/{worker_id}/next-task", response_model=NextTaskOut)
async def next_task(worker: LiveWorker, body: NextTaskIn, ctl: Ctl) -> NextTaskOut:
    """The worker's task (a scheduling cycle runs if it holds none), or null and when to ask again."""
    state = ctl.run.state
    retry = ctl.config.controller.heartbeat_interval_s / 2
    factor = ctl.speed_factor(worker["idx"])
    if state != "running":
        return NextTaskOut(task=None, retry_after_s=retry, run_state=state, speed_factor=factor)
    row = dispatch.next_task(ctl, worker["worker_id"], ctl.clock())
    task = None if row is None else TaskOut(
        task_id=row["task_id"], lease=row["lease"], kind=row["kind"], tokens=row["tokens"],
        priority=row["priority"], memory_mb=row["memory_mb"], input_kb=row["input_kb"],
        output_kb=row["output_kb"], shard=row["shard"],
        num_shards=ctl.config.workers.count if row["kind"] == "shard" else None)
    return NextTaskOut(task=task, retry_after_s=retry, run_state=state, speed_factor=factor)


def record(ctl: Controller, worker_id: str, sample: TelemetryIn, now: float) -> None:
    merged = telemetry.merge(ctl.store.telemetry(worker_id), sample.model_dump(exclude_none=True),
                             ctl.config.controller.ewma_alpha)
    ctl.store.put_telemetry(worker_id, merged, now)
