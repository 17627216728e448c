"""Dependencies of the route handlers, as Annotated aliases.

Every dependency is `async def`, so it runs on the event loop with the handlers and the store
is only ever touched from that one thread.
"""

from __future__ import annotations

import hmac
import sqlite3
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from .context import Controller

# auto_error=False: a missing header must be 401 like a wrong one (HTTPBearer says 403 on
# some FastAPI versions); declaring the scheme puts it in the OpenAPI document.
_bearer = HTTPBearer(auto_error=False, description="the run's RUN_TOKEN")


async def controller(request: Request) -> Controller:
    return request.app.state.ctl


Ctl = Annotated[Controller, Depends(controller)]


async def require_token(ctl: Ctl,
                        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> None:
    """401 unless `Authorization: Bearer <RUN_TOKEN>` (compared in constant time)."""
    given = credentials.credentials.encode() if credentials else b""
    if not hmac.compare_digest(given, ctl.settings.run_token.encode()):
        raise HTTPException(401, "missing or wrong run token", headers={"WWW-Authenticate": "Bearer"})


Authorized = Depends(require_token)


async def live_worker(worker_id: str, ctl: Ctl) -> sqlite3.Row:
    """The worker record; 404 if unknown, 410 if declared dead or replaced (register again)."""
    worker = ctl.store.worker(worker_id)
    if worker is None:
        raise HTTPException(404, f"unknown worker {worker_id!r}")
    if worker["status"] != "alive":
        raise HTTPException(410, f"worker {worker_id} is {worker['status']}: register again")
    return worker


LiveWorker = Annotated[sqlite3.Row, Depends(live_worker)]


async def request_body(request: Request) -> bytes:
    """The raw body, already capped at max_body_kb by middleware.BodyLimit (413 past it)."""
    return await request.body()


RawBody = Annotated[bytes, Depends(request_body)]
