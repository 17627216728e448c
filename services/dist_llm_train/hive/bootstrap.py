"""The PS container of an `ml.trainer: hivemind` run: the collaboration's initial peer, nothing more.

It runs a hivemind DHT node with the run's derived identity (hive/identity.py) on 0.0.0.0:identity.PORT,
announcing the container's own address, so every worker can dial `/dns4/ps/tcp/PORT/p2p/<peer id>` from the
start. It takes no part in training or averaging (no parameters, no gradients pass through it) and evaluates
nothing: worker 0 keeps the run's books (hive/peer.py says why). Like the PS it answers PING on PS_ADDRESS's
port (compose's healthcheck, `ps --health`), so workers start once the DHT is up, and it leaves when the
controller says the run is over (or on SIGTERM). The key file lives in this container's tmpfs only.
"""

from __future__ import annotations

import logging
import os
import signal
import tempfile
import threading

import zmq

from .. import wire
from ..ps.report import END_STATES
from ..settings import Settings
from ..worker.client import ControlClient, ControlError, Unreachable
from . import identity

POLL_S = 2.0  # how often the run's state is read from the controller


def serve(settings: Settings, run_id: str, client: ControlClient, log: logging.Logger) -> int:
    from .peer import start_dht

    key_seed = identity.seed(settings.run_token, run_id)
    folder = tempfile.mkdtemp(prefix="dlt-hivemind-")
    key_path = os.path.join(folder, "initial-peer.key")
    with open(os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400), "wb") as fh:
        fh.write(identity.key_file(key_seed))
    dht = start_dht(identity.PORT, [], identity_path=key_path)
    if str(dht.peer_id) != identity.peer_id(key_seed):  # the derivation and the daemon disagree: nobody could join
        log.error("the DHT runs as %s, the derived identity is %s", dht.peer_id, identity.peer_id(key_seed))
        dht.shutdown()
        return 1
    log.info("hivemind initial peer of run %s: %s (%s)", run_id, dht.peer_id,
             ", ".join(str(a) for a in dht.get_visible_maddrs()))
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    context = zmq.Context()
    sock = context.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.bind(f"tcp://*:{settings.ps_address.rpartition(':')[2]}")
    try:
        while not stopping.is_set():
            if sock.poll(int(POLL_S * 1000)):
                answer_ping(sock)
            try:
                state = client.get_json("/healthz")["run_state"]
            except (ControlError, Unreachable) as exc:
                log.warning("no run state from the controller: %s", exc)
                continue
            if state in END_STATES:
                log.info("run %s is over (%s): leaving the swarm", run_id, state)
                break
    finally:
        sock.close()
        context.term()
        dht.shutdown()
    return 0


def answer_ping(sock: zmq.Socket) -> None:
    """PONG to a PING (version 0: no parameter server counts versions here); anything else is dropped."""
    while True:
        try:
            peer, *frames = sock.recv_multipart(zmq.NOBLOCK)
        except zmq.Again:
            return
        try:
            msg = wire.decode(frames, max_bytes=1 << 16, numel=None)
        except wire.WireError:
            continue
        if isinstance(msg, wire.Ping):
            sock.send_multipart([peer, *wire.encode(wire.Pong(0, 0, 0, 0))])
