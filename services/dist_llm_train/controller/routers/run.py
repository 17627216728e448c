"""/config and /run: the resolved run config, and stopping the run."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from ..deps import Authorized, Ctl, require_role
from ..models import StopIn
from .status import build_status

router = APIRouter(tags=["run"], dependencies=[Authorized])


@router.get("/config")
async def get_config(ctl: Ctl) -> dict[str, Any]:
    """The resolved run config: workers and the PS take it from here, so no two processes disagree."""
    return ctl.config.model_dump(mode="json")


@router.post("/run/stop", dependencies=[require_role("operator")])
async def stop(body: StopIn, ctl: Ctl) -> dict[str, Any]:
    """End the run as `stopped` (OPERATOR_TOKEN; no-op if it has ended), write its row, and answer the final status."""
    with ctl.store.transaction():
        ctl.run.end("stopped", body.reason)
    ctl.run.write_row_once()
    return build_status(ctl)
