"""`dist-llm-train bench tcp`: one TCP flow's goodput on lossy presets, per congestion control, beside Mathis.

Run by `make bench-tcp` in a container with the Docker socket and the repository at its host path. For each
preset (default: lossy, cellular, degraded, satellite) it brings up the real stack (basic mode, one worker,
the workers paused while measuring), then runs `verify --congestion-control cubic,bbr` inside the sidecar:
one bulk flow worker -> controller (up) and one controller -> worker (down) per algorithm, each chosen per
socket, after a warm-up of 10 RTTs, for max(10 s, 30 RTTs). It prints them beside the preset's cap and the
Mathis bound of one loss-based flow (MSS / RTT x 1.22 / sqrt(p), p the loss its data meets: with the userspace
backend, the receiver's). The table in netem/README.md ("TCP") comes from this command.
Exit status: 0 when every preset was measured, 1 otherwise (figures are shown, not judged).
"""

from __future__ import annotations

import argparse
import json
import time

from .netem import PAUSE_SETTLE_S, REPO, BenchStack

PROFILES = ("lossy", "cellular", "degraded", "satellite")
ALGORITHMS = ("cubic", "bbr")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--profiles", default=",".join(PROFILES), help="comma-separated presets")
    parser.add_argument("--algorithms", default=",".join(ALGORITHMS), help="comma-separated congestion controls")
    parser.add_argument("--seconds", type=float, default=None, help="each flow after its warm-up (default max(10 s, 30 RTTs))")


def measure(profile: str, algorithms: list[str], seconds: float | None) -> dict:
    with BenchStack(profile, "userspace", 1) as stack:
        stack.compose("pause", "worker")
        time.sleep(PAUSE_SETTLE_S)
        cmd = ["exec", "-T", "netem", "dist-llm-train", "verify", "--profile", profile, "--json",
               "--congestion-control", ",".join(algorithms)]
        done = stack.compose(*cmd, *(["--tcp-seconds", str(seconds)] if seconds else []), timeout=1800)
        try:
            return json.loads(done.stdout)
        except ValueError:
            raise RuntimeError(f"verify failed: {done.stderr.strip()[-1500:]}") from None


def fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def main(args: argparse.Namespace) -> int:
    if not (REPO / "compose.yaml").is_file():
        print(f"bench tcp: no compose.yaml in {REPO}: run it from the repository (make bench-tcp)")
        return 2
    algorithms = args.algorithms.split(",")
    print(f"== one TCP flow per direction, worker <-> controller, userspace backend; algorithms {', '.join(algorithms)}")
    header = ["preset", "RTT ms", "loss on data up / down %", "cap Mbit/s", "Mathis up / down",
              *[f"{a} up / down" for a in algorithms], "flow s"]
    rows, ok = [], True
    for profile in args.profiles.split(","):
        started = time.monotonic()
        try:
            report = measure(profile, algorithms, args.seconds)
        except RuntimeError as exc:
            print(f"-- {profile}: NOT MEASURED: {exc}")
            ok = False
            continue
        for problem in report["problems"]:
            print(f"-- {profile}: PROBLEM: {problem}")
        for result in report["results"]:
            exp, (worker, peer) = result["expected"], result["links"]
            got = result["tcp_by_algorithm"]
            seconds = next(iter(got.values()))["seconds"] if got else None
            rows.append([profile, f"{exp['rtt_ms']:g}", f"{peer['loss_pct']:g} / {worker['loss_pct']:g}",
                         "-" if exp["mbit"] is None else f"{exp['mbit']:g}",
                         f"{fmt(exp['mathis_up_mbit'])} / {fmt(exp['mathis_down_mbit'])}",
                         *[f"{fmt(got[a]['mbit_up'])} / {fmt(got[a]['mbit_down'])}" if a in got else "failed"
                           for a in algorithms], "-" if seconds is None else f"{seconds:.0f}"])
        print(f"-- {profile}: {time.monotonic() - started:.0f} s", flush=True)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    print()
    for row in [header, *rows]:
        print("| " + " | ".join(cell.ljust(w) for cell, w in zip(row, widths)) + " |")
    return 0 if ok else 1
