"""/ps/report: the parameter server's counters and losses; `done` ends an ML run."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException

from ..deps import Authorized, Ctl
from ..models import Empty, PsReportIn

router = APIRouter(tags=["ps"], dependencies=[Authorized])

FAILURE_PREFIXES = ("failed", "error")


@router.post("/ps/report", response_model=Empty)
async def ps_report(body: PsReportIn, ctl: Ctl) -> Empty:
    """Store the latest report. `done: true` ends the run: `failed` when its reason starts with
    'failed' or 'error', `finished` otherwise. 409 in a basic run, which has no PS."""
    if ctl.config.mode != "ml":
        raise HTTPException(409, "this is a basic run: it has no parameter server")
    with ctl.store.transaction():
        ctl.store.save_report("ps", body.model_dump(mode="json"), ctl.clock())
        if body.done:
            reason = body.reason or "the parameter server reports the run done"
            failed = reason.lower().startswith(FAILURE_PREFIXES)
            ctl.run.end("failed" if failed else "finished", reason)
    if body.done:
        ctl.run.write_row_once()
    return Empty()
