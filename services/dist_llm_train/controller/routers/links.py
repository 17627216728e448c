"""/links: the netem sidecar's report of the emulated links (it opens the gate of the run)."""

from __future__ import annotations

from fastapi import APIRouter

from ...config import RunConfig
from ..deps import Authorized, Ctl, require_role
from ..models import Empty, LinksIn

router = APIRouter(tags=["links"], dependencies=[Authorized])


@router.post("/links", response_model=Empty, dependencies=[require_role("sidecar")])
async def links(body: LinksIn, ctl: Ctl) -> Empty:
    """Store the latest report (SIDECAR_TOKEN). `ready` starts a waiting run, `failed` ends it (the preset cannot be
    applied), and so does `ready` without a declared worker in a hivemind run (every worker is a peer the
    swarm waits for; the sidecar has waited workers.start_wait_s for it already); `healthy: false` while
    the run is running marks its row degraded, with the sidecar's problems as the reason."""
    now = ctl.clock()
    previous = ctl.store.report("links")
    refused = None
    with ctl.store.transaction():
        ctl.store.save_report("links", body.model_dump(mode="json"), now)
        if body.failed and ctl.run.state == "waiting":
            refused = f"the links cannot be applied as the preset says: {body.failed}"
        elif body.ready and body.missing and ctl.run.state == "waiting" and hivemind_trainer(ctl.config):
            refused = (f"ml.trainer hivemind needs every declared worker as a peer; no running container after "
                       f"workers.start_wait_s = {ctl.config.workers.start_wait_s:g} s: {', '.join(body.missing)}")
        if refused is not None:
            ctl.run.end("failed", refused)
        elif body.ready:
            if ctl.run.state == "waiting":
                ctl.store.save_report("links_at_start", body.model_dump(mode="json"), now)
            ctl.run.start(f"netem sidecar reports the links ready: profile {body.profile}, backend {body.backend}, "
                          f"TCP {body.tcp_cc}")
        if not body.healthy and ctl.run.state == "running":
            ctl.run.degrade("links unhealthy: " + ("; ".join(body.problems) or "no detail given"))
    if body.failed or refused is not None:
        ctl.run.write_row_once()
    ctl.liveness.sidecar_heard = now
    ctl.compute_speed = tuple(body.compute_speed)
    if previous is None or previous[0].get("healthy") != body.healthy:
        ctl.log.info("links report: profile %s, backend %s, ready %s, healthy %s%s", body.profile, body.backend,
                     body.ready, body.healthy, f", problems: {body.problems}" if body.problems else "")
    return Empty()


def hivemind_trainer(config: RunConfig) -> bool:
    return config.ml is not None and config.ml.trainer == "hivemind"
