"""Dependencies of the route handlers, as Annotated aliases: who may call what.

Three layers, each checked in constant time: the run token (`Authorization: Bearer RUN_TOKEN`, 401) admits to
the run; a worker's own secret (`X-Worker-Secret`, answered by its registration; the controller keeps only its
SHA-256) makes it that worker and no other (403); a role credential (`X-Role-Token`: SIDECAR_TOKEN, PS_TOKEN,
OPERATOR_TOKEN) opens its role's routes (403). The route table in docs/architecture.md says which route needs what.

Every dependency is `async def`, so it runs on the event loop with the handlers and the store
is only ever touched from that one thread.
"""

from __future__ import annotations

import hashlib
import hmac
import sqlite3
from typing import Annotated, Callable

from fastapi import Depends, HTTPException, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from ..settings import ROLE_TOKENS
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

SECRET_HEADER = "X-Worker-Secret"
ROLE_HEADER = "X-Role-Token"
_secret = APIKeyHeader(name=SECRET_HEADER, auto_error=False, scheme_name="WorkerSecret",
                       description="the secret this worker's registration answered")
_role = APIKeyHeader(name=ROLE_HEADER, auto_error=False, scheme_name="RoleToken",
                     description="SIDECAR_TOKEN, PS_TOKEN or OPERATOR_TOKEN, as the route says")
WorkerSecret = Annotated[str | None, Depends(_secret)]


def hash_secret(secret: str) -> str:
    """What the store keeps of a worker's secret. One SHA-256 is enough: the secret is 32 random bytes, not a
    password, so there is nothing to guess and no need for a slow hash."""
    return hashlib.sha256(secret.encode()).hexdigest()


def matches(secret: str | None) -> Callable[[str | None], bool]:
    """Whether a stored hash is `secret`'s, compared in constant time (False for no secret or no hash)."""
    given = hash_secret(secret) if secret else ""
    return lambda stored: bool(given and stored) and hmac.compare_digest(given, stored)


def prove_worker(ctl: Controller, worker_id: str, secret: str | None) -> None:
    """403 unless `secret` is the one `worker_id` registered with: a worker acts only for itself."""
    if not secret:
        raise HTTPException(403, f"missing {SECRET_HEADER}: a worker route needs the secret the worker's "
                                 "registration answered")
    if not matches(secret)(ctl.store.secret_hash(worker_id)):
        raise HTTPException(403, f"{SECRET_HEADER} is not {worker_id}'s: a worker may act only for itself")


async def live_worker(worker_id: str, ctl: Ctl, secret: WorkerSecret) -> sqlite3.Row:
    """The calling worker's record: 404 if unknown, 403 if the caller is not that worker, 410 if declared dead or
    replaced (register again)."""
    worker = ctl.store.worker(worker_id)
    if worker is None:
        raise HTTPException(404, f"unknown worker {worker_id!r}")
    prove_worker(ctl, worker_id, secret)
    if worker["status"] != "alive":
        raise HTTPException(410, f"worker {worker_id} is {worker['status']}: register again")
    return worker


LiveWorker = Annotated[sqlite3.Row, Depends(live_worker)]


def role_refusal(role: str) -> HTTPException:
    return HTTPException(403, f"{ROLE_HEADER}: not the {role}'s credential ({ROLE_TOKENS[role]}); the run token "
                              "and a worker's secret open no role route")


def holds_role(ctl: Controller, role: str, given: str | None) -> bool:
    expected = getattr(ctl.settings, f"{role}_token")
    return bool(given and expected) and hmac.compare_digest(given.encode(), expected.encode())


def require_role(role: str):
    """A dependency: 403 unless `X-Role-Token` is the credential of `role` (a key of settings.ROLE_TOKENS)."""
    async def check(ctl: Ctl, given: Annotated[str | None, Depends(_role)]) -> None:
        if not holds_role(ctl, role, given):
            raise role_refusal(role)
    return Depends(check)


async def require_ps_reporter(ctl: Ctl, given: Annotated[str | None, Depends(_role)], secret: WorkerSecret) -> None:
    """PS_TOKEN; in a hivemind run also worker 0 by its own secret: there the peers hold the parameters and
    worker 0 keeps the run's books (hive/peer.py), so its report is the PS's."""
    if holds_role(ctl, "ps", given):
        return
    ml = ctl.config.ml
    if ml is not None and ml.trainer == "hivemind" and any(map(matches(secret), ctl.store.live_secret_hashes(0))):
        return
    raise role_refusal("ps")


PsReporter = Depends(require_ps_reporter)


async def request_body(request: Request) -> bytes:
    """The raw body, already capped at max_body_kb by middleware.BodyLimit (413 past it)."""
    return await request.body()


RawBody = Annotated[bytes, Depends(request_body)]
