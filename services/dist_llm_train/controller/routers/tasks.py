"""/tasks: a task's input (basic mode) and its completion."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Query, Response

from .. import tasks
from ..deps import Authorized, Ctl, RawBody, WorkerSecret, prove_worker
from ..models import CompleteOut
from ..store import StaleLease

router = APIRouter(prefix="/tasks", tags=["tasks"], dependencies=[Authorized])


@router.get("/{task_id}/input", response_class=Response,
            responses={200: {"content": {"application/octet-stream": {}}}})
async def task_input(task_id: str, lease: str, ctl: Ctl, secret: WorkerSecret) -> Response:
    """The input bytes of a task, for the holder of its current lease (409 otherwise), proved by its
    X-Worker-Secret (403 otherwise)."""
    if ctl.store.task(task_id) is None:
        raise HTTPException(404, f"unknown task {task_id!r}")
    try:
        row = ctl.store.check_lease(task_id, lease)
    except StaleLease:
        raise HTTPException(409, f"lease {lease} is not the current lease of {task_id}") from None
    prove_worker(ctl, row["worker_id"], secret)
    data = tasks.task_input(ctl.config.seed, task_id, row["input_kb"])
    ctl.store.add_bytes(served=len(data))
    return Response(data, media_type="application/octet-stream")


@router.post("/{task_id}/complete", response_model=CompleteOut)
async def complete(task_id: str, body: RawBody, ctl: Ctl, secret: WorkerSecret, worker_id: str = Query(),
                   lease: str = Query()) -> CompleteOut:
    """Count a task done under its current lease, for `worker_id` proved by its X-Worker-Secret (403 otherwise).
    A retry with the same lease answers
    `already_completed`; a revoked or foreign lease (a worker declared dead, for one) gets 409
    and is not counted; a result that is not SHAKE-256 of the task's input gets 422."""
    if ctl.store.worker(worker_id) is None:
        raise HTTPException(404, f"unknown worker {worker_id!r}")
    prove_worker(ctl, worker_id, secret)
    row = ctl.store.task(task_id)
    if row is None:
        raise HTTPException(404, f"unknown task {task_id!r}")
    if ctl.run.ended and not (row["state"] == "completed" and row["lease"] == lease):
        raise HTTPException(409, f"the run has ended ({ctl.run.state}); nothing more is counted")
    current = row["state"] == "assigned" and row["lease"] == lease
    if current and row["kind"] == "synthetic":
        expected = tasks.task_result(tasks.task_input(ctl.config.seed, task_id, row["input_kb"]), row["output_kb"])
        if body != expected:
            raise HTTPException(422, f"result of {task_id} is not SHAKE-256 of its input "
                                     f"({len(body)} bytes, expected {len(expected)})")
    now = ctl.clock()
    try:
        with ctl.store.transaction():
            status = ctl.store.complete(task_id, worker_id, lease, len(body), now)
            if status == "completed":
                ctl.metrics.events["completions"] += 1
                ctl.log.info("task %s completed by %s", task_id, worker_id)
            finished = (status == "completed" and ctl.config.mode == "basic" and ctl.run.state == "running"
                        and not ctl.store.unfinished())
            if finished:
                ctl.run.end("finished", "every task completed")
    except StaleLease:
        ctl.metrics.events["stale_completions"] += 1
        ctl.log.info("completion of %s by %s refused: lease %s is revoked or not its own", task_id, worker_id, lease)
        raise HTTPException(409, f"lease {lease} is not the current lease of {task_id}") from None
    if finished:
        ctl.run.write_row_once()
    return CompleteOut(status=status)
