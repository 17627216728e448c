"""The controller's FastAPI application, built from a validated config and the settings."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from .. import __version__
from ..config import RunConfig
from ..settings import Settings
from . import health
from .context import Controller
from .middleware import BodyLimit, RequestMetrics
from .live import LiveFeed
from .routers import docs, links, ps, run, status, tasks, ui, workers
from .runstate import Run
from .scheduling.base import Scheduler
from .store import Store


def create_app(config: RunConfig, settings: Settings, *, scheduler: Scheduler | None = None,
               clock: Callable[[], float] = time.time, log: logging.Logger | None = None) -> FastAPI:
    """Open (or create) STATE_DIR/controller.db, resume or create the run, and build the app.
    The failure detector runs while the app is served (its lifespan); tests that drive the
    clock themselves call health.check() instead."""
    if scheduler is None:
        from .scheduling import SCHEDULERS

        scheduler = SCHEDULERS[config.controller.scheduler]()
    log = log or logging.getLogger("controller")
    store = Store(settings.state_dir / "controller.db")
    run_state = Run(store, config, settings, clock, log)
    run_state.begin()
    ctl = Controller(config=config, settings=settings, store=store, run=run_state, scheduler=scheduler,
                     clock=clock, log=log)
    ctl.liveness.sidecar_heard = clock()
    if (reported := store.report("links")) is not None:  # a restarted controller keeps the preset's factors
        ctl.compute_speed = tuple(reported[0].get("compute_speed", (1.0,)))

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        watcher = asyncio.create_task(health.watch(ctl))
        try:
            yield
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            store.close()

    # docs_url/redoc_url off: routers/docs serves /docs with its files from here (FastAPI's loads them from a CDN).
    app = FastAPI(title="dist-llm-train controller", version=__version__, lifespan=lifespan,
                  description="Control plane of a dist-llm-train run: workers, tasks, telemetry, links, PS. "
                              "The live view of the run: /ui.", docs_url=None, redoc_url=None)
    app.state.ctl = ctl
    app.state.live = LiveFeed(ctl)
    app.add_exception_handler(RequestValidationError, validation_failed)
    app.add_middleware(BodyLimit, max_bytes=config.controller.max_body_kb * 1024)
    app.add_middleware(RequestMetrics, metrics=ctl.metrics)  # outermost: counts the 413s too
    for module in (workers, tasks, run, links, ps, status, ui, docs):
        app.include_router(module.router)
    return app


async def validation_failed(request: Request, exc: RequestValidationError) -> JSONResponse:
    """422 naming each bad field, without echoing the input back (it may be large, or NaN,
    which JSON cannot carry)."""
    return JSONResponse({"detail": [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]}
                                    for e in exc.errors()]}, status_code=422)
