"""/ps: the parameter server's report (counters, losses; `done` ends an ML run) and the data plane's keys.

The PS's credential (PS_TOKEN) opens what only the PS does; the PS's public key is for every token holder."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException

from ..deps import Authorized, Ctl, PsReporter, require_role
from ..models import Empty, PsKey, PsReportIn, PsWorkersOut

router = APIRouter(tags=["ps"], dependencies=[Authorized])

FAILURE_PREFIXES = ("failed", "error")


@router.post("/ps/report", response_model=Empty, dependencies=[PsReporter])
async def ps_report(body: PsReportIn, ctl: Ctl) -> Empty:
    """Store the latest report (PS_TOKEN; in a hivemind run also worker 0's secret). `done: true` ends the run:
    `failed` when its reason starts with 'failed' or 'error', `finished` otherwise. 409 in a basic run, which has
    no PS."""
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


@router.post("/ps/key", response_model=Empty, dependencies=[require_role("ps")])
async def announce_key(body: PsKey, ctl: Ctl) -> Empty:
    """The PS's data-plane key (public: its secret stays in the PS), handed to workers as they register."""
    if ctl.config.mode != "ml":
        raise HTTPException(409, "this is a basic run: it has no parameter server")
    if body.mode != ctl.config.ml.data_plane_auth or (body.mode == "curve") != (body.public_key is not None):
        raise HTTPException(422, f"the run's ml.data_plane_auth is {ctl.config.ml.data_plane_auth}; a curve key "
                                 "needs public_key, a plain one none")
    ctl.store.save_report("ps_key", body.model_dump(mode="json"), ctl.clock())
    ctl.log.info("the PS announced its data-plane key (%s)", body.mode)
    return Empty()


@router.get("/ps/key", response_model=PsKey)
async def get_key(ctl: Ctl) -> PsKey:
    """The PS's key for a worker that registered before the PS announced it (or after a PS restart); 404 until then."""
    saved = ctl.store.report("ps_key")
    if saved is None:
        raise HTTPException(404, "the PS has not announced its key yet")
    return PsKey(**saved[0])


@router.get("/ps/workers", response_model=PsWorkersOut, dependencies=[require_role("ps")])
async def worker_keys(ctl: Ctl) -> PsWorkersOut:
    """The data keys of the live workers: the PS admits these and no other (dead and replaced ones drop out)."""
    return PsWorkersOut(keys=ctl.store.live_data_keys())
