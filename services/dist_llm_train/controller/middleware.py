"""ASGI middleware: the body size cap and per-request metrics (plain ASGI, no per-request tasks)."""

from __future__ import annotations

import time

from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .metrics import Metrics, method_label


class BodyLimit:
    """413 for a request body over `max_bytes`: at once when Content-Length says so, and, for a
    body sent without one (chunked), as soon as the bytes received pass the cap, so an
    oversized upload is never held in memory whole."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            response = JSONResponse({"detail": self.message()}, status_code=413)
            return await response(scope, receive, send)
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                # FastAPI re-raises an HTTPException met while reading the body: the answer is 413.
                raise HTTPException(413, self.message())
            return message

        await self.app(scope, counted, send)

    def message(self) -> str:
        return f"request body larger than max_body_kb ({self.max_bytes // 1024} KiB)"


class RequestMetrics:
    """Counts every answer by method, route template and status, and times it (not an event stream,
    /ui/events: it lasts as long as its viewer, and is no handling time)."""

    def __init__(self, app: ASGIApp, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status, stream = 500, False
        started = time.perf_counter()

        async def noted(message: Message) -> None:
            nonlocal status, stream
            if message["type"] == "http.response.start":
                status = message["status"]
                stream = dict(message.get("headers", [])).get(b"content-type", b"").startswith(b"text/event-stream")
            await send(message)

        try:
            await self.app(scope, receive, noted)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.requests[(method_label(scope["method"]), route, status)] += 1
            if not stream:
                self.metrics.request_seconds.observe(time.perf_counter() - started)
