"""`dist-llm-train controller`: validate the config, then serve the control plane.

Exit 2 with the file and field named when the settings or the config are refused.
"""

from __future__ import annotations

import argparse
import logging
import sys

from ..config import load_run_config
from ..schema import ConfigError
from ..settings import ROLE_TOKENS, from_env, require_role_tokens
from ..worker.client import KEEPALIVE_S


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="0.0.0.0", help="address to listen on (default 0.0.0.0)")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000)")


def main(args: argparse.Namespace) -> int:
    try:
        settings = from_env()
        require_role_tokens(settings, *ROLE_TOKENS)
        overrides = {} if settings.num_workers is None else {"workers.count": settings.num_workers}
        config = load_run_config(settings.config_path, overrides)
    except ConfigError as exc:
        print(f"controller: refused: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(stream=sys.stdout, level=settings.log_level, format="%(asctime)s %(name)s %(message)s")

    import uvicorn

    from .app import create_app

    app = create_app(config, settings)
    logging.getLogger("controller").info(
        "serving on %s:%d (config %s, digest %s, %d workers, state %s)", args.host, args.port,
        settings.config_path, config.digest(), config.workers.count, settings.state_dir / "controller.db")
    # Workers keep their control connections open between calls (client.KEEPALIVE_S): over an
    # emulated WAN a new connection costs a round trip before the request even starts.
    server = uvicorn.Server(uvicorn.Config(app, host=args.host, port=args.port, log_level="warning", access_log=False,
                                           timeout_keep_alive=KEEPALIVE_S + 15, timeout_graceful_shutdown=3))
    # A browser's live stream (/ui/events) lasts as long as the run, and uvicorn's stop waits for open
    # responses: the streams end themselves once the server is stopping (3 s later uvicorn cuts them).
    app.state.live.stopping = lambda: server.should_exit
    server.run()
    return 0
