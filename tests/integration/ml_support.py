"""Helpers of the ML integration tests: a LocalRun of configs/ml_ci.yaml (controller, PS and workers as
real processes on loopback), raw messages to the live PS, and what the run left on disk."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import zmq

from dist_llm_train import wire
from dist_llm_train.config import load_run_config
from dist_llm_train.demo import LocalRun

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


class Probe:
    """A DEALER of the test's own on the live PS: raw frames in, the decoded answer out."""

    def __init__(self, run: LocalRun, numel: int | None = None):
        self.context = zmq.Context()
        self.address = run.env["PS_ADDRESS"]
        self.numel = numel
        self.sock = self.connect()

    def connect(self) -> zmq.Socket:
        sock = self.context.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(self.address)
        return sock

    def ask(self, frames: list, timeout_s: float = 10.0) -> wire.Message | None:
        """Send frames, return the decoded answer, or None if none came within `timeout_s`."""
        self.sock.send_multipart(frames, copy=False)
        if not self.sock.poll(int(timeout_s * 1000)):
            return None
        return wire.decode(self.sock.recv_multipart(), max_bytes=1 << 30, numel=self.numel)

    def pong(self) -> wire.Pong:
        answer = self.ask(wire.encode(wire.Ping()))
        assert isinstance(answer, wire.Pong), answer
        return answer

    def close(self) -> None:
        self.sock.close()
        self.context.term()


def ps_version(run: LocalRun) -> int | None:
    """The PS's version from a PING on a socket of its own (None if no answer within 2 s): a PING left
    unanswered on a shared socket would be answered later and misalign that socket's replies."""
    probe = Probe(run)
    try:
        answer = probe.ask(wire.encode(wire.Ping()), timeout_s=2.0)
        return answer.version if isinstance(answer, wire.Pong) else None
    finally:
        probe.close()


def wait_for_version(run: LocalRun, version: int, timeout_s: float) -> None:
    run.wait_until(lambda: (ps_version(run) or -1) >= version, timeout_s, f"the PS to reach version {version}")
