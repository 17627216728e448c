"""`dist-llm-train worker`: learn the worker index, then run the agent until the run is over.

Exit codes: 0 run over; 1 controller unreachable or a protocol error; 2 bad settings or no
index; 3 RUN_TOKEN refused by the controller.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import time

from ..schema import ConfigError
from ..settings import from_env, touch
from .agent import Agent
from .identity import IdentityError, resolve

LINGER_TOUCH_S = 10.0  # well inside the 30 s age compose's healthcheck accepts


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--index", type=int, default=None,
                        help="worker index for local runs (default: WORKER_INDEX, else the compose container number - 1)")


def main(args: argparse.Namespace) -> int:
    try:
        settings = from_env()
        name, index = resolve(args.index if args.index is not None else settings.worker_index)
    except (ConfigError, IdentityError) as exc:
        print(f"worker: refused: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(stream=sys.stdout, level=settings.log_level, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request is too many
    # compose stop (SIGTERM) or Ctrl-C on a local demo: leave at once, without a traceback;
    # the controller requeues the task after heartbeat_timeout_s
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    signal.signal(signal.SIGINT, lambda *_: sys.exit(130))
    log = logging.getLogger(name)
    code = Agent(settings, name, index, log).run()
    if code == 0 and settings.linger:
        # compose keeps the container (and its emulated link) up for `make verify` until `make down`
        log.info("idle until the stack stops")
        while True:  # still healthy: the run ended cleanly and the link stays up for measurement
            touch(settings.health_file)
            time.sleep(LINGER_TOUCH_S)
    return code
