"""HTTP client of the controller's control plane, with retries that survive a controller restart.

A connection error or timeout is retried with exponential backoff (0.1 s doubling to 1 s) for
up to `give_up_after_s`; a `docker compose restart controller` takes a few seconds, so the
caller just sees a slow call. The 1 s cap keeps a worker's first heartbeat after the restart
well inside the fresh timeout the restarted controller grants (heartbeat_timeout_s >= 2 x interval). Retrying is safe because every call is idempotent on the
controller's side: next-task returns the task already held, a completion repeated with the same
lease answers `already_completed`, a repeated registration (with the secret of the incarnation it made)
retires that incarnation.

Every call carries the run token; a worker's client also its own secret once registered (`identify`), a
role's (the PS's) its credential (`role_token`): controller/deps.py.

HTTP errors are not retried; they raise ControlError subclasses the agent acts on:
401 TokenRefused (fatal), 403 Forbidden (not this caller's to do: fatal), 404 NotFound and 410 Gone (register
again), 409 Conflict (lease lost; at registration, the name still held by a live incarnation).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import httpx


class ControlError(Exception):
    def __init__(self, status: int, detail: str):
        super().__init__(f"HTTP {status}: {detail}")
        self.status, self.detail = status, detail


class TokenRefused(ControlError):
    pass


class Forbidden(ControlError):
    pass


class NotFound(ControlError):
    pass


class Conflict(ControlError):
    pass


class Gone(ControlError):
    pass


class Unreachable(Exception):
    """The controller did not answer for give_up_after_s."""


ERRORS = {401: TokenRefused, 403: Forbidden, 404: NotFound, 409: Conflict, 410: Gone}
SECRET_HEADER = "X-Worker-Secret"  # controller/deps.py
ROLE_HEADER = "X-Role-Token"
# An idle connection is kept this long (httpx's default is 5 s): a task computes for longer
# than that between calls, and over an emulated WAN every new connection costs a round trip.
KEEPALIVE_S = 60.0


class ControlClient:
    def __init__(self, base_url: str, token: str, log: logging.Logger, *, give_up_after_s: float = 120.0,
                 timeout_s: float = 30.0, role_token: str | None = None):
        self.base_url, self.log, self.give_up_after_s = base_url, log, give_up_after_s
        headers = {"Authorization": f"Bearer {token}", **({ROLE_HEADER: role_token} if role_token else {})}
        self.http = httpx.Client(base_url=base_url, headers=headers,
                                 timeout=timeout_s, limits=httpx.Limits(keepalive_expiry=KEEPALIVE_S))

    def close(self) -> None:
        self.http.close()

    def identify(self, secret: str) -> None:
        """Send this worker secret from now on (a new registration answers a new one)."""
        self.http.headers[SECRET_HEADER] = secret

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        deadline = time.monotonic() + self.give_up_after_s
        delay = 0.1
        warned = False
        while True:
            try:
                response = self.http.request(method, path, **kwargs)
            except httpx.TransportError as exc:  # connection refused or reset, timeouts
                if time.monotonic() + delay > deadline:
                    raise Unreachable(f"controller at {self.base_url} unreachable for "
                                      f"{self.give_up_after_s:g} s ({exc!r})") from None
                if not warned:
                    self.log.warning("controller unreachable (%r); retrying", exc)
                    warned = True
                time.sleep(delay)
                delay = min(2 * delay, 1.0)
                continue
            if warned:
                self.log.info("controller reachable again")
            if response.is_success:
                return response
            try:
                detail = response.json().get("detail", response.text)
            except ValueError:
                detail = response.text
            raise ERRORS.get(response.status_code, ControlError)(response.status_code, str(detail))

    def get_json(self, path: str, **kwargs: Any) -> dict[str, Any]:
        return self.request("GET", path, **kwargs).json()

    def post_json(self, path: str, body: dict[str, Any] | None = None, **kwargs: Any) -> dict[str, Any]:
        return self.request("POST", path, json={} if body is None else body, **kwargs).json()
