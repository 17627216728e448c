"""Fidelity probe: what two containers' links really do, beside what their preset entries promise.

`measure_pair(a, b)` runs, with processes started inside the two network namespaces (so the
target images need nothing but Python and this package, which the sidecar brings):
  RTT     500 UDP echoes a -> b, sent on a fixed schedule (not stop-and-wait, so a 600 ms RTT costs
          no more time than a 1 ms one), spaced >= 2 x the larger jitter: the userspace delayer
          releases packets in arrival order, and closer probes would queue behind a slower
          predecessor, skewing the mean up and the stdev down (simulated: 2 x jitter spacing
          costs < 1 % of the mean and ~5 % of the stdev).
  loss    2000 more UDP echoes, closer together; round-trip loss over all 2500.
  rate    bulk TCP a -> b (up) and b -> a (down) after a warm-up of 10 RTTs (slow start), with each
          sender's congestion control as its namespace sets it (`measure_tcp` can choose another).
Probe traffic is paced to at most 10 % of the narrower rate cap, so it measures the link rather
than queueing behind itself.

`expected(link_a, link_b, backend)` is the preset's promise (netem/README.md): RTT = d_a + d_b,
stdev = sqrt(j_a^2 + j_b^2), round-trip loss = 1 - (1 - p_a)(1 - p_b), throughput = the
narrower rate cap, and on a lossy path the Mathis bound of one loss-based flow each way (its data
meets the loss of the sender's link with the netem backend, of the receiver's with userspace).
`judge` applies the tolerances of `make verify`.

Failure: a server that cannot start or a client that fails raises ProbeError with its stderr.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from . import traffic
from .agent import AgentError
from .backends.base import ns_popen
from .lateness import TOLERANCE_FLOOR_MS, TOLERANCE_FRACTION
from .preset import LinkSpec
from .tcp import mathis_mbit

RTT_SAMPLES = 500
LOSS_SAMPLES = 2000
PROBE_BYTES = 16  # sequence number + send time: the smallest probe traffic.py sends
PROBE_WIRE_BITS = (PROBE_BYTES + 8 + 20 + 14) * 8  # + UDP, IP and Ethernet headers
TCP_SECONDS = 3.0
SERVICES = str(Path(__file__).resolve().parents[2])  # the folder holding dist_llm_train

# Tolerances of `make verify` (the fidelity targets).
RTT_TOLERANCE = (TOLERANCE_FRACTION, TOLERANCE_FLOOR_MS)  # mean RTT within max(10 %, 2 ms)
STDEV_TOLERANCE = (0.30, 1.0)  # stdev within 30 % (and 1 ms: the floor of a zero-jitter link's noise)
LOSS_TOLERANCE_PP = 1.0  # loss within 1 percentage point
RATE_RANGE = (0.85, 1.05)  # TCP at 85-105 % of the cap...
RATE_JUDGED_UP_TO_MBIT = 50.0  # ...for caps up to 50 Mbit/s, on loss-free pairs (see `judge`)


class ProbeError(RuntimeError):
    """A probe process failed; the message names the pair and carries the process's stderr."""


@dataclass(frozen=True)
class Endpoint:
    name: str  # container name, for messages
    netns: str  # "agent:<socket>" (the sidecar's helper in that container, agent.py), or a path nsenter enters (tests)
    address: str  # its address on the stack's network
    link: LinkSpec  # the link the preset gives it now


def expected(a: LinkSpec, b: LinkSpec, backend: str = "userspace") -> dict:
    caps = [r for r in (a.rate_mbit, b.rate_mbit) if r is not None]
    rtt_ms = a.delay_ms + b.delay_ms
    lost_at = (lambda sender, receiver: sender) if backend == "netem" else (lambda sender, receiver: receiver)
    return {
        "rtt_ms": rtt_ms,
        "rtt_stdev_ms": math.hypot(a.jitter_ms, b.jitter_ms),
        "loss_pct": 100 * (1 - (1 - a.loss_pct / 100) * (1 - b.loss_pct / 100)),
        "mbit": min(caps) if caps else None,
        # one loss-based flow (cubic, reno) each way: MSS / RTT x 1.22 / sqrt(p); None on a loss-free path
        "mathis_up_mbit": mathis_mbit(rtt_ms, lost_at(a, b).loss_pct),
        "mathis_down_mbit": mathis_mbit(rtt_ms, lost_at(b, a).loss_pct),
    }


def schedule(a: LinkSpec, b: LinkSpec) -> dict:
    """Probe spacing, reply timeout and TCP warm-up for this pair (see the module docstring)."""
    exp = expected(a, b)
    pace_s = PROBE_WIRE_BITS / (0.1 * exp["mbit"] * 1e6) if exp["mbit"] else 0.0
    rtt_s = exp["rtt_ms"] / 1000
    return {
        "rtt_interval_s": max(0.002, 2 * max(a.jitter_ms, b.jitter_ms) / 1000, pace_s),
        "loss_interval_s": max(0.001, pace_s),
        "timeout_s": max(1.0, 3 * rtt_s + 0.5),
        "tcp_warmup_s": max(1.0, 10 * rtt_s),
    }


def _python(netns: str, *args: str, **kwargs) -> subprocess.Popen:
    try:
        return ns_popen(netns, [sys.executable, "-m", "dist_llm_train.netem.probe", *args],
                        env_extra={"PYTHONPATH": SERVICES}, text=True, **kwargs)
    except AgentError as exc:
        raise ProbeError(str(exc)) from None


class Server:
    """`probe serve` in a namespace: UDP echo + TCP sink on random ports, until closed."""

    def __init__(self, endpoint: Endpoint):
        for _ in range(5):  # a random port may be taken; try others
            self.udp_port, self.tcp_port = random.sample(range(40000, 60000), 2)
            self.proc = _python(endpoint.netns, "serve", "--udp-port", str(self.udp_port),
                                "--tcp-port", str(self.tcp_port), stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            if self.proc.stdout.readline().strip() == "ready":
                return
            err = self.proc.stderr.read()
            self.proc.wait()
        raise ProbeError(f"probe server in {endpoint.name} did not start: {err.strip()}")

    def close(self) -> None:
        self.proc.stdin.close()  # `serve` exits at end of input
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc.stdout.close()
        self.proc.stderr.close()


def run_client(endpoint: Endpoint, *args: str, timeout_s: float) -> dict:
    proc = _python(endpoint.netns, *args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise ProbeError(f"probe client in {endpoint.name} ran past {timeout_s:.0f} s") from None
    if proc.returncode:
        raise ProbeError(f"probe client in {endpoint.name} failed: {err.strip()}")
    return json.loads(out)


def measure_pair(a: Endpoint, b: Endpoint) -> dict:
    """RTT, jitter, round-trip loss and TCP throughput both ways between a and b (a probes b)."""
    plan = schedule(a.link, b.link)
    started = time.monotonic()
    server_b, server_a = Server(b), Server(a)
    try:
        udp = run_client(a, "udp", "--host", b.address, "--port", str(server_b.udp_port),
                      "--rtt-interval", str(plan["rtt_interval_s"]), "--loss-interval", str(plan["loss_interval_s"]),
                      "--timeout", str(plan["timeout_s"]),
                      timeout_s=60 + RTT_SAMPLES * plan["rtt_interval_s"] + LOSS_SAMPLES * plan["loss_interval_s"])
        up, down = tcp_both_ways(a, b, server_a, server_b, TCP_SECONDS, plan["tcp_warmup_s"])
    finally:
        server_b.close()
        server_a.close()
    return {**udp, "mbit_up": up["mbit"], "mbit_down": down["mbit"], "mbit": min(up["mbit"], down["mbit"]),
            "tcp_cc_up": up["congestion_control"], "tcp_cc_down": down["congestion_control"],
            "plan": plan, "seconds": time.monotonic() - started}


def tcp_both_ways(a: Endpoint, b: Endpoint, server_a: Server, server_b: Server, seconds: float, warmup_s: float,
                  congestion_control: str | None = None) -> tuple[dict, dict]:
    """One bulk TCP flow a -> b, then one b -> a: ({mbit, congestion_control} up, down)."""
    args = ("--seconds", str(seconds), "--warmup", str(warmup_s),
            *(("--congestion-control", congestion_control) if congestion_control else ()))
    timeout = 60 + seconds + warmup_s
    up = run_client(a, "tcp", "--host", b.address, "--port", str(server_b.tcp_port), *args, timeout_s=timeout)
    down = run_client(b, "tcp", "--host", a.address, "--port", str(server_a.tcp_port), *args, timeout_s=timeout)
    return up, down


def measure_tcp(a: Endpoint, b: Endpoint, congestion_control: str | None, seconds: float) -> dict:
    """One flow each way with the given algorithm on both senders (None: each namespace's own), after
    a warm-up of 10 RTTs: {mbit_up, mbit_down, congestion_control, seconds}."""
    warmup_s = schedule(a.link, b.link)["tcp_warmup_s"]
    server_b, server_a = Server(b), Server(a)
    try:
        up, down = tcp_both_ways(a, b, server_a, server_b, seconds, warmup_s, congestion_control)
    finally:
        server_b.close()
        server_a.close()
    return {"mbit_up": up["mbit"], "mbit_down": down["mbit"], "congestion_control": up["congestion_control"],
            "seconds": seconds, "warmup_s": warmup_s}


def judge(measured: dict, exp: dict) -> dict[str, bool | None]:
    """Per figure: True within tolerance, False outside, None not judged. Throughput is judged
    only for caps up to 50 Mbit/s on pairs without loss: one TCP flow cannot fill a lossy link
    (about MSS / (RTT sqrt(p)), Mathis et al.), so there the figure is shown, not judged."""
    verdict: dict[str, bool | None] = {}
    rel, floor = RTT_TOLERANCE
    verdict["rtt_ms"] = (measured["rtt_ms"] is not None
                         and abs(measured["rtt_ms"] - exp["rtt_ms"]) <= max(rel * exp["rtt_ms"], floor))
    rel, floor = STDEV_TOLERANCE
    verdict["rtt_stdev_ms"] = (measured["rtt_stdev_ms"] is not None
                               and abs(measured["rtt_stdev_ms"] - exp["rtt_stdev_ms"])
                               <= max(rel * exp["rtt_stdev_ms"], floor))
    verdict["loss_pct"] = abs(measured["loss_pct"] - exp["loss_pct"]) <= LOSS_TOLERANCE_PP
    cap = exp["mbit"]
    if cap is None or cap > RATE_JUDGED_UP_TO_MBIT or exp["loss_pct"] > 0:
        verdict["mbit"] = None
    else:
        low, high = RATE_RANGE
        verdict["mbit"] = low * cap <= measured["mbit"] <= high * cap
    return verdict


# ---- the processes that run inside the namespaces ------------------------------------------

def _serve(args: argparse.Namespace) -> int:
    ready = threading.Barrier(3)
    errors: list[BaseException] = []

    def run(server, port):
        try:
            server(port, ready=ready.wait)
        except BaseException as exc:  # noqa: BLE001 - reported on stderr by the main thread
            errors.append(exc)
            ready.abort()

    for server, port in ((traffic.udp_echo_server, args.udp_port), (traffic.tcp_sink, args.tcp_port)):
        threading.Thread(target=run, args=(server, port), daemon=True).start()
    try:
        ready.wait(timeout=10)
    except threading.BrokenBarrierError:
        print(f"cannot serve: {errors[0] if errors else 'timeout'}", file=sys.stderr)
        return 1
    print("ready", flush=True)
    sys.stdin.read()  # until the parent closes our input (or dies)
    return 0


def _udp(args: argparse.Namespace) -> dict:
    rtt = traffic.udp_rtt_probe(args.host, args.port, RTT_SAMPLES, args.rtt_interval, PROBE_BYTES, args.timeout)
    loss = traffic.udp_rtt_probe(args.host, args.port, LOSS_SAMPLES, args.loss_interval, PROBE_BYTES, args.timeout)
    summary = traffic.rtt_summary(rtt)
    return {"rtt_ms": summary["mean_ms"], "rtt_stdev_ms": summary["stdev_ms"], "rtt_p50_ms": summary["p50_ms"],
            "rtt_p99_ms": summary["p99_ms"], "rtt_samples": len(rtt),
            "loss_pct": traffic.rtt_summary(rtt + loss)["loss_pct"], "loss_samples": len(rtt) + len(loss)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m dist_llm_train.netem.probe")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("serve", help="UDP echo and TCP sink until stdin closes")
    p.add_argument("--udp-port", type=int, required=True)
    p.add_argument("--tcp-port", type=int, required=True)
    p = sub.add_parser("udp", help="RTT and loss probes; one JSON line")
    p.add_argument("--host", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--rtt-interval", type=float, required=True)
    p.add_argument("--loss-interval", type=float, required=True)
    p.add_argument("--timeout", type=float, required=True)
    p = sub.add_parser("tcp", help="bulk TCP send; one JSON line")
    p.add_argument("--host", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--seconds", type=float, required=True)
    p.add_argument("--warmup", type=float, required=True)
    p.add_argument("--congestion-control", default=None)
    args = parser.parse_args(argv)
    if args.command == "serve":
        return _serve(args)
    if args.command == "udp":
        print(json.dumps(_udp(args)))
    else:
        print(json.dumps(traffic.tcp_bulk_send(args.host, args.port, args.seconds, args.warmup,
                                               congestion_control=args.congestion_control)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
