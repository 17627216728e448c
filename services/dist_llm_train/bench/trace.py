"""`dist-llm-train bench trace`: does a traced link's throughput follow its trace?

    make bench-trace [TRACE_PROFILE=varying] [TRACE_SECONDS=40]
    (in a container with NET_ADMIN, NET_RAW and SYS_ADMIN: python3 -m dist_llm_train bench trace ...)

For every worker entry of the preset that names a trace, on a veth pair between two network
namespaces (devices named eth0, as in a container): namespace `worker` gets the entry's link through
the sidecar's own code (`NamespaceLink`, userspace backend: tbf on egress and on the ifb, NFQUEUE
delayer), namespace `server` stays unimpaired. One bulk TCP flow server -> worker (the download: it
crosses the ifb's tbf and the delayer) runs from a warm-up of WARMUP_S at the trace's t = 0 values,
then for `--seconds` while the link is moved to `preset.link_at(worker, t)` at every step, as the
sidecar does (`NamespaceLink.change`: tc qdisc change, delayer SIGHUP). Measured in 1 s buckets
aligned with the trace's clock (over the times the counters were really read), against the trace's
time-weighted mean rate over the same span (`Trace.mean_rate`): `wire`, the bytes the ifb's tbf sent (`tc -s qdisc show`: frames, as the rate
counts them), and `goodput`, the payload the worker's TCP socket received in order (`ss -ti`
bytes_received: after the delayer, without headers, so about 1448/1514 = 95.6 % of the wire).

Verdict per trace and per measure (issue 12): Pearson r >= 0.9 and mean absolute error <= 15 % of the
trace's mean rate. Exit status 0 when all pass. The machine's other load shows in the figures.
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from ..netem.backends import choose
from ..netem.backends.base import IFB
from ..netem.preset import LinkSpec, load_preset
from ..netem.probe import Endpoint, Server, run_client
from ..netem.nslink import NamespaceLink
from ..netem.testbed import ADDRESSES, VethPair

WARMUP_S = 3.0
MIN_R, MAX_MAE_SHARE = 0.9, 0.15
SENT = re.compile(r"Sent (\d+) bytes")
RECEIVED = re.compile(r"bytes_received:(\d+)")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--profile", default="varying", help="a preset whose worker entries name traces")
    parser.add_argument("--netem-dir", default="netem", help="folder of the presets")
    parser.add_argument("--seconds", type=int, default=40, help="how much of each trace to follow, from t = 0")
    parser.add_argument("--congestion-control", default="cubic", choices=("cubic", "bbr", "reno"),
                        help="the flow's TCP algorithm, set on its socket (the presets' default: cubic)")


def follow_figures(measured: list[float], expected: list[float]) -> dict:
    """Pearson r of the buckets, their mean absolute error, and that error as a share of the mean
    expected rate, with the verdict (r >= MIN_R and share <= MAX_MAE_SHARE)."""
    r = statistics.correlation(measured, expected)
    mae = statistics.fmean(abs(m - e) for m, e in zip(measured, expected))
    share = mae / statistics.fmean(expected)
    return {"pearson_r": r, "mae_mbit": mae, "mae_share": share, "passed": r >= MIN_R and share <= MAX_MAE_SHARE}


def counts(netns: str) -> tuple[int, int]:
    """(bytes the ifb's root qdisc, the rate limiter of what the worker receives, has sent; payload bytes
    the worker's TCP sockets have received in order, after the delayer: TCP_INFO's bytes_received)."""
    def show(*argv: str) -> str:
        return subprocess.run(["nsenter", f"--net={netns}", "--", *argv], capture_output=True, text=True,
                              timeout=10, check=True).stdout

    return (int(SENT.search(show("tc", "-s", "qdisc", "show", "dev", IFB)).group(1)),
            sum(int(n) for n in RECEIVED.findall(show("ss", "-tinH"))))


def follow(preset, index: int, seconds: int, congestion_control: str) -> dict[str, list[float]]:
    """Per 1 s bucket of worker `index`'s traced (or phased) link: the trace's Mbit/s (`trace`), what the rate limiter
    sent (`wire`, frames) and the flow's goodput (`goodput`, payload delivered to the worker's socket)."""
    backend, _ = choose("userspace")
    with VethPair() as pair, tempfile.TemporaryDirectory() as workdir:
        pair.name_eth0()
        worker = Endpoint("worker", pair.netns("a"), ADDRESSES["a"], preset.link_at("worker", index, 0))
        server = Endpoint("server", pair.netns("b"), ADDRESSES["b"], LinkSpec())
        link = NamespaceLink(backend, worker.netns, "worker", seed=1, workdir=Path(workdir))
        link.apply(worker.link)
        sink = Server(worker)
        flow = threading.Thread(target=run_client, args=(server, "tcp", "--host", worker.address, "--port",
                                                         str(sink.tcp_port), "--seconds", str(seconds + 3),
                                                         "--warmup", str(WARMUP_S),
                                                         "--congestion-control", congestion_control),
                                kwargs={"timeout_s": seconds + WARMUP_S + 60}, daemon=True)
        try:
            flow.start()
            deadline = time.monotonic() + 20
            while counts(worker.netns)[0] == 0 and time.monotonic() < deadline:  # the client is starting
                time.sleep(0.05)
            time.sleep(WARMUP_S)
            t0 = time.monotonic()
            # (s after t0 when read, wire bytes, goodput bytes)
            samples = [(time.monotonic() - t0, *counts(worker.netns))]
            while len(samples) <= seconds:
                t = time.monotonic() - t0
                if t >= len(samples):  # a bucket ends: read the counters before anything else
                    samples.append((t, *counts(worker.netns)))
                    continue
                want = preset.link_at("worker", index, t)
                if want != link.link:
                    link.change(want)
                change = preset.next_change(t)
                wake = len(samples) if change is None else min(len(samples), change)
                time.sleep(max(0.0, wake - (time.monotonic() - t0)))
            flow.join(timeout=WARMUP_S + 30)
        finally:
            sink.close()
            link.remove()
    base = preset.link_for("worker", index)
    # Each bucket over the times its counters were really read (a busy host reads some late), the trace too.
    spans = list(zip(samples, samples[1:]))
    if base.trace is not None:
        trace = preset.traces[base.trace]
        expected = [trace.mean_rate(a[0], b[0], base.trace_end, base.rate_mbit) for a, b in spans]
    else:  # a link that phases move: the rate in force at the bucket's middle
        expected = [preset.link_at("worker", index, (a[0] + b[0]) / 2).rate_mbit for a, b in spans]
    return {"trace": expected,
            **{name: [(b[i] - a[i]) * 8 / 1e6 / (b[0] - a[0]) for a, b in spans]
               for i, name in ((1, "wire"), (2, "goodput"))}}


def main(args: argparse.Namespace) -> int:
    preset = load_preset(args.profile, Path(args.netem_dir))
    entries = [i for i, link in enumerate(preset.workers) if link.trace is not None]
    if not entries:
        print(f"bench trace: preset {preset.name} names no trace")
        return 2
    print(f"preset {preset.name}; {args.seconds} s of each trace from t = 0 after a {WARMUP_S:g} s warm-up; one "
          f"TCP flow ({args.congestion_control}) server -> worker through the userspace backend; 1 s buckets of "
          "what the receive-side tbf sent (wire) and of the flow's goodput")
    failed = False
    for index in entries:
        base = preset.workers[index]
        series = follow(preset, index, args.seconds, args.congestion_control)
        print(f"\nworker {index}: {base.trace} ({base.trace_end})")
        print("  s  trace Mbit/s  wire  goodput")
        for k, row in enumerate(zip(series["trace"], series["wire"], series["goodput"])):
            print(f"{k:3d}  {row[0]:11.2f}  {row[1]:5.2f}  {row[2]:7.2f}")
        for name in ("wire", "goodput"):
            figures = follow_figures(series[name], series["trace"])
            failed |= not figures["passed"]
            print(f"  {name}: mean {statistics.fmean(series[name]):.2f} Mbit/s (trace {statistics.fmean(series['trace']):.2f}); "
                  f"Pearson r {figures['pearson_r']:.3f} (>= {MIN_R}), MAE {figures['mae_mbit']:.2f} Mbit/s = "
                  f"{100 * figures['mae_share']:.1f} % of the trace's mean (<= {100 * MAX_MAE_SHARE:.0f} %): "
                  f"{'pass' if figures['passed'] else 'FAIL'}")
    return 1 if failed else 0
