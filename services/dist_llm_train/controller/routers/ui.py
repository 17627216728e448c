"""/ui: the live view of the run in a browser, its data (/ui/state, /ui/events) and its files.

Read-only and open, like /status: the controller listens on 127.0.0.1 of the host (compose publishes
127.0.0.1:8000), and no page or URL ever carries the run token. The page loads only files served here,
and its Content-Security-Policy keeps it so: it can talk to nothing but this controller.

Live: /ui/events is a stream of server-sent events. Each `update` event holds the run as /ui/state
does, sent only when something changed, at most every STREAM_PERIOD_S, with the loss-curve rows the
browser has not seen yet (its `since`, or the Last-Event-ID a reconnecting browser sends). The stream
ends once the run has ended and its last update is out (the page then polls slowly), and when the
controller stops (the browser reconnects to the next one). Past MAX_STREAMS
open streams the answer is 503, and the page polls /ui/state instead.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Annotated, Any, AsyncIterator

from fastapi import APIRouter, Depends, Header, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, Response, StreamingResponse

from ... import webassets
from ..assets import serve, url
from ..live import LiveFeed

router = APIRouter(tags=["ui"])

STREAM_PERIOD_S = 0.5
KEEPALIVE_S = 15.0  # a comment line now and then, so proxies and browsers keep an idle stream open
MAX_STREAMS = 32
ASSETS = webassets.load("chart.js", "ui.js", "style.css", "icon.svg")
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
                               "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def render_page() -> str:
    page = (webassets.STATIC_DIR / "ui.html").read_text()
    for name, asset in ASSETS.items():
        page = page.replace("{{" + name + "}}", url("/ui/static", asset))
    return page


PAGE = render_page()


async def live_feed(request: Request) -> LiveFeed:
    return request.app.state.live


Live = Annotated[LiveFeed, Depends(live_feed)]


@router.get("/ui", response_class=HTMLResponse, include_in_schema=False)
async def page() -> HTMLResponse:
    return HTMLResponse(PAGE, headers=PAGE_HEADERS)


@router.get("/ui/static/{name}", include_in_schema=False)
async def static(name: str, v: str | None = None) -> Response:
    return serve(ASSETS, name, v)


@router.get("/ui/state")
async def state(feed: Live, since: Annotated[int, Query(ge=0, description="the last curve `seq` held")] = 0
                ) -> dict[str, Any]:
    """The run as the live view shows it: /status, the sidecar's whole report (`links_report`, and
    `links` per container), the run's codec, `progress` with an estimate of the time left, the
    staleness histogram once the PS wrote it, and `curve.rows`, the loss-curve rows after `since`."""
    return feed.update(since)


@router.get("/ui/events", response_class=StreamingResponse,
            responses={200: {"content": {"text/event-stream": {}},
                             "description": "`update` events, each the body of /ui/state"},
                       503: {"description": "too many open streams: poll /ui/state"}})
async def events(feed: Live, since: Annotated[int, Query(ge=0)] = 0,
                 last_event_id: Annotated[str | None, Header()] = None) -> StreamingResponse:
    """Server-sent events: an `update` whenever the run changed, at most every 0.5 s; the stream
    ends after the update that shows the run ended."""
    if feed.streams >= MAX_STREAMS:
        raise HTTPException(503, f"{MAX_STREAMS} live streams are open already: poll /ui/state")
    if last_event_id and last_event_id.isdigit() and len(last_event_id) < 16:
        since = max(since, int(last_event_id))
    return StreamingResponse(stream(feed, since), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def stream(feed: LiveFeed, since: int) -> AsyncIterator[str]:
    feed.streams += 1
    try:
        yield f"retry: {int(STREAM_PERIOD_S * 4000)}\n\n"
        sent_key, quiet = None, time.monotonic()
        while not feed.stopping():
            snap, key = feed.snapshot()
            curve = feed.curve(snap["status"]["run"]["id"], since)
            if key != sent_key or curve["rows"]:
                body = json.dumps({**snap, "curve": curve}, allow_nan=False, separators=(",", ":"))
                yield f"id: {curve['last_seq']}\nevent: update\ndata: {body}\n\n"
                sent_key, since, quiet = key, max(since, curve["last_seq"]), time.monotonic()
                if snap["ended"]:
                    return
            elif time.monotonic() - quiet > KEEPALIVE_S:
                yield ": keep-alive\n\n"
                quiet = time.monotonic()
            await asyncio.sleep(STREAM_PERIOD_S)
    finally:
        feed.streams -= 1
