"""Helpers of the ML integration tests: a LocalRun of configs/ml_ci.yaml (controller, PS and workers as
real processes on loopback), raw messages to the live PS, and what the run left on disk."""

from __future__ import annotations

import csv
import json
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import zmq
from zmq.utils.monitor import recv_monitor_message

from dist_llm_train import wire
from dist_llm_train.config import load_run_config
from dist_llm_train.dataplane import HEALTH_NAME, Credential, new_credential, setup_client
from dist_llm_train.demo import LocalRun
from dist_llm_train.ps.main import health_path
from dist_llm_train.settings import from_env

REPO = Path(__file__).resolve().parents[2]
ML_CI = REPO / "configs" / "ml_ci.yaml"


def ml_run(tmp_path: Path, log, overrides: dict[str, Any] | None = None) -> LocalRun:
    """A LocalRun of ml_ci.yaml; one torch thread per process, so many workers share 2 cores without
    oversubscribed threads spinning against each other."""
    run = LocalRun(load_run_config(ML_CI, overrides), tmp_path / "runs", output=log)
    run.env["TORCH_THREADS"] = "1"
    return run


def row_of(run: LocalRun, final: dict[str, Any]) -> dict[str, str]:
    (row,) = csv.DictReader(open(run.runs_dir / final["run"]["id"] / "row.csv"))
    return row


def number(row: dict[str, str], column: str) -> float | None:
    return float(row[column]) if row[column] else None


def register(run: LocalRun, name: str, key: str, index: int = 99) -> dict:
    """Register `name` at the run's controller with data key `key`, as a worker would (the run token)."""
    answer = httpx.post(f"{run.env['CONTROLLER_URL']}/workers/register", json={
        "name": name, "index": index, "capacity": 1.0, "memory_mb": 1, "data_key": key},
        headers={"Authorization": f"Bearer {run.env['RUN_TOKEN']}"}, timeout=10)
    answer.raise_for_status()
    return answer.json()


def ps_public_key(run: LocalRun) -> str:
    answer = httpx.get(f"{run.env['CONTROLLER_URL']}/ps/key", headers={"Authorization": f"Bearer {run.env['RUN_TOKEN']}"},
                       timeout=10)
    answer.raise_for_status()
    return answer.json()["public_key"]


class Probe:
    """A DEALER of the test's own on the live PS: raw frames in, the decoded answer out.

    `name`: a token holder playing a worker: registered at the controller under that name with a key of its
    own, which the PS then admits. None: the PS's own health key (what `ps --health` uses; PING only).
    `key`: connect with this credential instead, registered nowhere unless the caller did. A registered probe
    heartbeats (so the controller keeps it alive and the PS keeps admitting it) until `close` or `go_silent`."""

    def __init__(self, run: LocalRun, numel: int | None = None, name: str | None = None,
                 key: Credential | None = None):
        self.context = zmq.Context()
        self.address = run.env["PS_ADDRESS"]
        self.numel = numel
        self.name = name or HEALTH_NAME
        self.silent = threading.Event()
        if key is None and name is None:
            saved = json.loads(health_path(from_env(run.env)).read_text())
            key, server = Credential(saved["mode"], saved["public"], saved["secret"]), saved["server"]
        else:
            if key is None:
                key = new_credential(run.config.ml.data_plane_auth)
                registered = register(run, name, key.public)
                self.worker_id, self.secret = registered["worker_id"], registered["secret"]
                threading.Thread(target=self.heartbeats, args=(run,), daemon=True).start()
            server = ps_public_key(run) if key.mode == "curve" else None
        self.key, self.server = key, server
        self.sock = self.connect()

    def heartbeats(self, run: LocalRun) -> None:
        url = f"{run.env['CONTROLLER_URL']}/workers/{self.worker_id}/heartbeat"
        headers = {"Authorization": f"Bearer {run.env['RUN_TOKEN']}", "X-Worker-Secret": self.secret}
        while not self.silent.wait(0.5):
            try:
                httpx.post(url, json={}, headers=headers, timeout=5)
            except httpx.HTTPError:  # the controller has stopped: the run is over
                return

    def go_silent(self) -> None:
        """Stop heartbeating: the controller declares this probe dead after heartbeat_timeout_s."""
        self.silent.set()

    def connect(self, timeout_s: float = 10.0) -> zmq.Socket:
        """A socket whose handshake went through (a key registered a moment before the PS's ZAP handler last
        asked the controller can be refused once: a new socket then, as a worker does), or the last one tried."""
        deadline = time.monotonic() + timeout_s
        while True:
            sock = self.context.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            setup_client(sock, self.key, self.name, self.server)
            monitor = sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_HANDSHAKE_FAILED_AUTH
                                              | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL)
            sock.connect(self.address)
            event = recv_monitor_message(monitor)["event"] if monitor.poll(3000) else None
            sock.disable_monitor()
            monitor.close()
            if event == zmq.EVENT_HANDSHAKE_SUCCEEDED or time.monotonic() > deadline:
                return sock
            sock.close()
            time.sleep(0.2)

    def ask(self, frames: list, timeout_s: float = 10.0) -> wire.Message | None:
        """Send frames, return the decoded answer, or None if none came within `timeout_s`."""
        self.sock.send_multipart(frames, copy=False)
        return self.answer(timeout_s)

    def answer(self, timeout_s: float = 10.0) -> wire.Message | None:
        """The next answer, decoded, or None if none came within `timeout_s`."""
        if not self.sock.poll(int(timeout_s * 1000)):
            return None
        return wire.decode(self.sock.recv_multipart(), max_bytes=1 << 30, numel=self.numel)

    def pong(self) -> wire.Pong:
        answer = self.ask(wire.encode(wire.Ping()))
        assert isinstance(answer, wire.Pong), answer
        return answer

    def close(self) -> None:
        self.silent.set()
        self.sock.close()
        self.context.term()


def ps_version(run: LocalRun) -> int | None:
    """The PS's version from a PING on a socket of its own (None if no answer within 2 s): a PING left
    unanswered on a shared socket would be answered later and misalign that socket's replies."""
    try:
        probe = Probe(run)
    except FileNotFoundError:  # the PS has not written its health key yet: not started
        return None
    try:
        answer = probe.ask(wire.encode(wire.Ping()), timeout_s=2.0)
        return answer.version if isinstance(answer, wire.Pong) else None
    finally:
        probe.close()


def wait_for_version(run: LocalRun, version: int, timeout_s: float) -> None:
    run.wait_until(lambda: (ps_version(run) or -1) >= version, timeout_s, f"the PS to reach version {version}")
