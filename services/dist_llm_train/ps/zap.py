"""The PS's ZAP handler (ZeroMQ RFC 27): a thread that answers every handshake on the PS's socket.

It admits a connection when the key it proves is in the KeyRegistry (dataplane.py), and refuses it otherwise
(status 400: ZeroMQ closes the connection before taking any message from it). The registry is the live
workers' keys as the controller lists them (`fetch`): refreshed every REFRESH_S, and at once (at most every
MISS_REFRESH_S) when an unknown key knocks, so a worker that registered a moment ago is not turned away. A
worker declared dead or replaced drops out of the list at the next refresh: new handshakes are refused, and
the PS refuses the further messages of its open connection (KeyRegistry.name_of).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable

import zmq

from ..dataplane import KeyRegistry
from .report import LogThrottle

ZAP_ENDPOINT = "inproc://zeromq.zap.01"
REFRESH_S = 2.0
MISS_REFRESH_S = 0.1  # an unknown key costs the controller at most 10 requests a second


class ZapHandler:
    def __init__(self, context: zmq.Context, registry: KeyRegistry, fetch: Callable[[], dict[str, str]] | None,
                 log: logging.Logger):
        """`fetch`: name -> key of the live workers (raises on failure: the last list stays); None: the
        registry is fixed (tests, bench)."""
        self.registry, self.fetch, self.log = registry, fetch, log
        self.throttle = LogThrottle(log)
        self.sock = context.socket(zmq.REP)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.bind(ZAP_ENDPOINT)  # before the PS's socket binds: no handshake goes unanswered
        self.stopping = threading.Event()
        self.fetched_at = float("-inf")
        self.thread = threading.Thread(target=self.run, name="zap", daemon=True)

    def start(self) -> None:
        self.refresh(time.monotonic())
        self.thread.start()

    def run(self) -> None:
        try:
            while not self.stopping.is_set():
                if self.sock.poll(int(REFRESH_S * 1000 / 4)):
                    self.sock.send_multipart(self.answer(self.sock.recv_multipart()))
                now = time.monotonic()
                if now - self.fetched_at >= REFRESH_S:
                    self.refresh(now)
        finally:
            self.sock.close()

    def answer(self, request: list[bytes]) -> list[bytes]:
        if len(request) < 6:  # not a ZAP request: libzmq never sends one; answer so the REP socket goes on
            return [b"1.0", b"", b"500", b"malformed request", b"", b""]
        version, request_id, _domain, address, _identity, mechanism, *credentials = request
        user = self.admit(mechanism, credentials)
        if user is None and self.fetch is not None and time.monotonic() - self.fetched_at >= MISS_REFRESH_S:
            self.refresh(time.monotonic())
            user = self.admit(mechanism, credentials)
        if user is None:
            self.throttle.warning(f"zap:{address!r}", "data plane: refused a %s handshake from %s (key not "
                                  "registered for a live worker)", mechanism.decode(errors="replace"),
                                  address.decode(errors="replace"))
            return [version, request_id, b"400", b"not admitted", b"", b""]
        return [version, request_id, b"200", b"OK", user.encode(), b""]

    def admit(self, mechanism: bytes, credentials: list[bytes]) -> str | None:
        if mechanism == b"CURVE" and len(credentials) == 1:
            return self.registry.admit_curve(credentials[0])
        if mechanism == b"PLAIN" and len(credentials) == 2:
            return self.registry.admit_plain(*credentials)
        return None

    def refresh(self, now: float) -> None:
        if self.fetch is None:
            return
        self.fetched_at = now
        try:
            self.registry.replace(self.fetch())
        except Exception as exc:  # the controller away for a moment: the last list stays
            self.throttle.warning("zap:fetch", "data plane: cannot refresh the workers' keys: %s", exc)

    def close(self) -> None:
        self.stopping.set()
        if self.thread.is_alive():
            self.thread.join(timeout=2)
        else:
            self.sock.close()
