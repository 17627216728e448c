"""What the userspace delayer costs, measured on a veth pair between two network namespaces.

    python3 -m dist_llm_train.bench.delayer        (root, or a container with NET_ADMIN + SYS_ADMIN)

Figures (targets from the WAN-emulation issue):
- added latency at a 0 ms spec: UDP echo RTT with the delayer minus without (median < 0.5 ms);
- the highest rate one TCP stream sustains through a 50 ms delay (>= 100 Mbit/s) and the
  delayer's CPU meanwhile. TCP buffers are raised to 32 MB in both namespaces where /proc/sys is
  writable, so that the window, not the delayer, is not the limit (see `_raise_tcp_buffers`);
- the same with the stream paced to 100 Mbit/s (DESIGN.md: 3-7 % of a core), and meanwhile the
  RTT of UDP probes (which queue behind the stream's packets) and how late packets leave after
  their due time (DESIGN.md: 0.1-0.3 ms on average);
- tbf 50 Mbit/s (the userspace backend's own qdisc arguments) + 50 ms: one TCP stream's rate
  (85-105 % of the cap).
The machine's other load shows in every figure: run it on a quiet machine for the record.
"""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import tempfile
import time
from typing import Callable

from ..netem.backends.base import tbf_args
from ..netem.preset import LinkSpec
from ..netem.testbed import DEVICES, DelayedLink, VethPair
from ..netem.traffic import rtt_summary

TCP_BUFFERS = "4096 131072 33554432"
WARMUP_S, MEASURE_S = 2.0, 4.0  # slow start to a few hundred Mbit/s takes ~1 s at 50 ms


def _cpu_seconds(pid: int) -> tuple[float, float]:
    """User and system CPU seconds of a process."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def _tcp_through(link: DelayedLink, pace_mbit: float | None = None) -> dict:
    """One stream a -> b. Over the measured window (after the warm-up): its Mbit/s, the delayer's
    CPU (% of one core, total and user) and packets/s, the per-second release-lateness summaries
    of its stats file, and the RTT of UDP probes sent meanwhile (they queue behind the stream)."""
    pid = link.delayer.pid
    sender = link.tcp_send(MEASURE_S, WARMUP_S, pace_mbit)
    time.sleep(WARMUP_S)
    probes = link.probe(int(MEASURE_S / 0.01) - 50, 0.01, background=True)
    (user0, system0), t0 = _cpu_seconds(pid), time.monotonic()
    snapshots = {}
    while time.monotonic() < t0 + MEASURE_S:
        time.sleep(0.25)
        stats = link.stats()
        snapshots[stats["time"]] = stats  # one per stats interval
    (user, system), elapsed = _cpu_seconds(pid), time.monotonic() - t0
    first, last = snapshots[min(snapshots)], snapshots[max(snapshots)]
    return {
        "mbit": link.tcp_mbit(sender),
        "cpu_pct": 100 * (user - user0 + system - system0) / elapsed,
        "cpu_user_pct": 100 * (user - user0) / elapsed,
        "pps": (last["packets_seen"] - first["packets_seen"]) / max(1e-9, last["time"] - first["time"]),
        "late": [s["timer_late_ms"] for s in snapshots.values() if s["timer_late_ms"]["mean"] is not None],
        "rtt": rtt_summary(link.collect(probes)),
    }


def _raise_tcp_buffers(pair: VethPair) -> int:
    """Raise both namespaces' TCP buffer limits; return the one in force for a stream a -> b
    (the smaller of a's send and b's receive limit). Inside a container /proc/sys is read-only
    and a new namespace's defaults stay (here: send 4 MB, receive 32 MB), so one stream at 50 ms
    tops out near 430 Mbit/s whatever the delayer does."""
    for side in ("a", "b"):
        try:
            pair.run(side, "sysctl", "-q", "-w", f"net.ipv4.tcp_rmem={TCP_BUFFERS}", f"net.ipv4.tcp_wmem={TCP_BUFFERS}")
        except subprocess.CalledProcessError:
            pass
    send = int(pair.run("a", "sysctl", "-n", "net.ipv4.tcp_wmem").split()[2])
    receive = int(pair.run("b", "sysctl", "-n", "net.ipv4.tcp_rmem").split()[2])
    return min(send, receive)


def _row(figure: str, value: float, unit: str, target: str = "", ok: bool | None = None) -> dict:
    return {"figure": figure, "value": round(value, 3), "unit": unit, "target": target, "ok": ok}


def run(report: Callable[[dict], None]) -> list[dict]:
    """Measure; call `report(row)` for each figure as soon as it exists and return every row.
    A row: {"figure", "value", "unit", "target" (text, "" if none), "ok" (bool, None if no target)}.
    Raises (subprocess.CalledProcessError, RuntimeError) when the test bed cannot be built."""
    rows = []

    def emit(row: dict) -> None:
        rows.append(row)
        report(row)

    with VethPair() as pair, tempfile.TemporaryDirectory() as tmp:
        emit(_row("TCP buffer limit of the stream", _raise_tcp_buffers(pair) / 2**20, "MB"))
        link = DelayedLink(pair, tmp)
        base = rtt_summary(link.probe(2000, 0.001))
        link.start_delayer(delay_ms=0)
        idle = rtt_summary(link.probe(2000, 0.001))
        added = idle["p50_ms"] - base["p50_ms"]
        emit(_row("added latency at 0 ms, median", added, "ms", "< 0.5", added < 0.5))
        # p99s side by side, not subtracted: on a busy machine either can hold a descheduling.
        emit(_row("  UDP RTT p99 without the delayer", base["p99_ms"], "ms"))
        emit(_row("  UDP RTT p99 through it at 0 ms", idle["p99_ms"], "ms"))

        link.write_spec(delay_ms=50)
        link.delayer.send_signal(signal.SIGHUP)
        link.wait_stats(lambda s: s["spec"]["delay_ms"] == 50)
        for label, pace in (("one TCP stream through 50 ms", None), ("one TCP stream paced to 100 Mbit/s, 50 ms", 100)):
            got = _tcp_through(link, pace)
            emit(_row(label, got["mbit"], "Mbit/s", ">= 100" if pace is None else "",
                      got["mbit"] >= 100 if pace is None else None))
            emit(_row("  packets through the delayer", got["pps"], "per second"))
            emit(_row("  delayer CPU meanwhile (user + system)", got["cpu_pct"], "% of a core"))
            emit(_row("  of which user (Python)", got["cpu_user_pct"], "% of a core"))
            rtt = got["rtt"]
            emit(_row("  UDP RTT meanwhile, median", rtt["p50_ms"], "ms", "48-52 (one delay)",
                      abs(rtt["p50_ms"] - 50) <= 2))
            emit(_row("  UDP RTT meanwhile, p99", rtt["p99_ms"], "ms"))
            # Per-second summaries: the mean of the means, the median of the medians, the worst p99.
            late = got["late"]
            emit(_row("  release after due time, mean", statistics.fmean(x["mean"] for x in late), "ms",
                      "0.1-0.3 (DESIGN.md)"))
            emit(_row("  release after due time, median", statistics.median(x["p50"] for x in late), "ms"))
            emit(_row("  release after due time, worst p99", max(x["p99"] for x in late), "ms"))

        cap = LinkSpec(delay_ms=50, rate_mbit=50)
        pair.run("a", "tc", "qdisc", "replace", "dev", DEVICES["a"], "root", *tbf_args(cap))
        got = _tcp_through(link)
        emit(_row("tbf 50 Mbit/s + 50 ms, one TCP stream", got["mbit"], "Mbit/s", "42.5-52.5 (85-105 %)",
                  42.5 <= got["mbit"] <= 52.5))
        emit(_row("  packets through the delayer", got["pps"], "per second"))
        emit(_row("  delayer CPU meanwhile (user + system)", got["cpu_pct"], "% of a core"))
        stats = link.stats()
        emit(_row("kernel queue drops (overflow + socket)", stats["overflow_drops"] + stats["socket_drops"], "packets",
                  "0", stats["overflow_drops"] + stats["socket_drops"] == 0))
    return rows


def main() -> int:
    print(f"{'figure':42} {'measured':>10}  {'unit':12} {'target':24} ok")

    def show(row: dict) -> None:
        ok = {True: "yes", False: "NO", None: ""}[row["ok"]]
        print(f"{row['figure']:42} {row['value']:>10.3f}  {row['unit']:12} {row['target']:24} {ok}", flush=True)

    rows = run(show)
    return 0 if all(row["ok"] is not False for row in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
