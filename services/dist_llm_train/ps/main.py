"""`dist-llm-train ps`: the parameter server of an ML run (ps/server.py), wired to the controller.

Start: the resolved run config from the controller (`GET /config`, with RUN_TOKEN), the run id from
`GET /status`; what only the PS may do at the controller (announce its key, read the live workers' keys,
report) also carries PS_TOKEN (a builtin run's PS refuses to start without it); the PS's data-plane key (`ps_key`: kept next to the run's checkpoints, so a restarted PS
keeps the identity its workers know) announced at `POST /ps/key`; the aggregation rule is checked for its window (a rule that cannot hold is refused: exit 2
with the reason, never the mean instead); the newest checkpoint of this run id under CHECKPOINT_DIR is
resumed; then the ROUTER listens on PS_ADDRESS's port. Results go to RUNS_DIR/<run_id>/ (curve.csv,
staleness.csv); reports to `POST /ps/report` every 2 s and at the end.

Exit codes: 0 the run is over (or SIGTERM: checkpoint written); 1 the controller stayed unreachable; 2 bad
settings or config (not an ML run, a rule that cannot hold, unreadable data); 3 RUN_TOKEN refused.
`ps --health`: PING the PS on this host's PS_ADDRESS port, exit 0 on PONG within 3 s, else 1. The data plane
admits only registered keys: the PS writes a key of its own for this check (`health_path`, mode 600, on the
container's /tmp), which its ZAP handler admits for PING only.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import zmq

from .. import wire_header
from ..dataplane import HEALTH_NAME, Credential, new_credential, setup_client
from ..schema import ConfigError
from ..settings import Settings, from_env

if TYPE_CHECKING:
    from ..config import RunConfig
    from ..worker.client import ControlClient

HEALTH_TIMEOUT_S = 3.0


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--health", action="store_true", help="PING the local PS and exit 0 if it answers")


def health_path(settings: Settings) -> Path:
    return Path(tempfile.gettempdir()) / f"dlt-ps-{settings.ps_address.rpartition(':')[2]}.health"


def write_private(path: Path, text: str) -> None:
    """Create or replace `path` readable by its owner only (a key file)."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)


def ps_key(mode: str, directory: Path | None) -> Credential:
    """The PS's data-plane key: read from `directory`/ps.key, or made and written there (mode 600) when missing
    or of another mode; in memory only without a directory. Only the PS reads or writes the file."""
    path = None if directory is None else directory / "ps.key"
    if path is not None and path.exists():
        saved = json.loads(path.read_text())
        if saved.get("mode") == mode:
            return Credential(mode, saved["public"], saved["secret"])
    key = new_credential(mode)
    if path is not None:
        directory.mkdir(parents=True, exist_ok=True)
        write_private(path, json.dumps({"mode": key.mode, "public": key.public, "secret": key.secret}))
    return key


def health(settings: Settings) -> int:
    port = settings.ps_address.rpartition(":")[2]
    try:
        saved = json.loads(health_path(settings).read_text())
    except (OSError, ValueError) as exc:
        print(f"ps: no health key yet ({exc})", file=sys.stderr)
        return 1
    context = zmq.Context()
    sock = context.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        setup_client(sock, Credential(saved["mode"], saved["public"], saved["secret"]), HEALTH_NAME, saved["server"])
        sock.connect(f"tcp://127.0.0.1:{port}")
        sock.send(wire_header.ping())
        if not sock.poll(int(HEALTH_TIMEOUT_S * 1000)):
            print(f"ps: no answer on port {port} within {HEALTH_TIMEOUT_S:g} s", file=sys.stderr)
            return 1
        version = wire_header.pong_version(sock.recv_multipart()[0])
        if version is None:
            print("ps: the answer to PING is not a PONG", file=sys.stderr)
            return 1
        print(f"ps: version {version}")
        return 0
    finally:
        sock.close()
        context.term()


def main(args: argparse.Namespace) -> int:
    try:
        settings = from_env()
    except ConfigError as exc:
        print(f"ps: refused: {exc}", file=sys.stderr)
        return 2
    if args.health:
        return health(settings)
    from ..config import RunConfig  # past the health check, which stays light (no pydantic models, httpx, torch)
    from ..results import safe_run_id
    from ..schema import validate
    from ..worker.client import ControlClient, ControlError, TokenRefused, Unreachable
    from .report import END_STATES

    logging.basicConfig(stream=sys.stdout, level=settings.log_level, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    log = logging.getLogger("ps")
    client = ControlClient(settings.controller_url, settings.run_token, log, give_up_after_s=60,
                           role_token=settings.ps_token)
    try:
        config = validate(RunConfig, client.get_json("/config"), f"{settings.controller_url}/config")
        run = client.get_json("/status")["run"]
    except TokenRefused:
        log.error("RUN_TOKEN refused by the controller")
        return 3
    except (ControlError, Unreachable) as exc:
        log.error("cannot get the run from the controller: %s", exc)
        return 1
    except ConfigError as exc:
        print(f"ps: refused: {exc}", file=sys.stderr)
        return 2
    try:  # the run id names the PS's folders under RUNS_DIR and CHECKPOINT_DIR
        run_id = safe_run_id(run["id"])
    except ValueError as exc:
        print(f"ps: refused: {settings.controller_url}/status: {exc}", file=sys.stderr)
        return 2
    if config.mode != "ml":
        print(f"ps: refused: the run's config {config.name!r} is mode {config.mode!r}; the PS serves ML runs",
              file=sys.stderr)
        return 2
    if run["state"] in END_STATES:
        log.info("run %s is already over (%s): nothing to serve", run_id, run["state"])
        return 0
    if config.ml.trainer == "hivemind":  # no parameter server: this container is the swarm's initial peer
        from ..hive.bootstrap import serve as serve_initial_peer

        return serve_initial_peer(settings, run_id, client, log)
    return serve(settings, config, run_id, client, log)


def serve(settings: Settings, config: RunConfig, run_id: str, client: ControlClient, log: logging.Logger) -> int:
    from ..dataplane import KeyRegistry
    from ..ml.train import fair_share, set_threads
    from ..settings import require_role_tokens
    from ..worker.client import ControlClient, ControlError, Unreachable
    from .report import Reporter
    from .server import ParameterServer, bind_address

    try:
        require_role_tokens(settings, "ps")
    except ConfigError as exc:
        print(f"ps: refused: {exc}", file=sys.stderr)
        return 2

    set_threads(settings.torch_threads or fair_share(config.workers.count + 1))  # the workers share the host

    def run_elapsed() -> float | None:
        try:
            return client.get_json("/status")["run"]["elapsed_s"]
        except (ControlError, Unreachable) as exc:
            log.warning("no run clock from the controller: %s", exc)
            return None

    mode = config.ml.data_plane_auth
    key = ps_key(mode, settings.checkpoint_dir / run_id)
    check = new_credential(mode)
    write_private(health_path(settings), json.dumps({"mode": mode, "public": check.public, "secret": check.secret,
                                                      "server": key.public if mode == "curve" else None}))
    try:
        client.post_json("/ps/key", {"mode": mode, "public_key": key.public if mode == "curve" else None})
    except (ControlError, Unreachable) as exc:
        log.error("cannot announce the PS's key to the controller: %s", exc)
        return 1
    keys_client = ControlClient(settings.controller_url, settings.run_token, log, give_up_after_s=5,
                                role_token=settings.ps_token)
    registry = KeyRegistry(mode, fixed={HEALTH_NAME: check.public})
    report_client = ControlClient(settings.controller_url, settings.run_token, log, give_up_after_s=20,
                                  role_token=settings.ps_token)
    reporter = Reporter(lambda body: report_client.post_json("/ps/report", body), log,
                        run_state=lambda: report_client.get_json("/healthz")["run_state"])
    try:
        server = ParameterServer(config, settings.run_token, bind_address(settings.ps_address), log, key=key,
                                 registry=registry, fetch_keys=lambda: keys_client.get_json("/ps/workers")["keys"],
                                 run_id=run_id,
                                 run_dir=settings.runs_dir / run_id, checkpoint_dir=settings.checkpoint_dir,
                                 run_elapsed=run_elapsed, reporter=reporter)
    except ConfigError as exc:
        print(f"ps: refused: {exc}", file=sys.stderr)
        return 2
    except zmq.ZMQError as exc:  # the port is taken, most likely
        log.error("cannot listen on %s: %s", bind_address(settings.ps_address), exc)
        return 1
    signal.signal(signal.SIGTERM, lambda *_: server.request_stop())
    try:
        return server.serve()
    finally:
        health_path(settings).unlink(missing_ok=True)
