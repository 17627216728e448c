"""The userspace delayer: holds each packet of an NFQUEUE for a delay (+ jitter), drops a share.

Runs inside the target's network namespace, fed by a rule on the receiver's ingress,
`iptables -t mangle -A PREROUTING -i <dev> -j NFQUEUE --queue-num N` (never an OUTPUT chain: a
packet held there still counts against its TCP socket, and one stream collapses to ~2 Mbit/s at
50 ms; DESIGN.md, "The userspace delayer"). Rate is not ours: a tbf does it.

Process interface (what the sidecar uses):

    python3 -m dist_llm_train.netem.delayer --queue-num N --spec-file F --stats-file S --seed K
                                            [--queue-maxlen M]

- Spec file (JSON, every key required): {"delay_ms": 50, "jitter_ms": 5, "loss_pct": 1,
  "rate_mbit": 50 or null}. rate_mbit only sizes the kernel queue (`queue_maxlen`; null: sized
  for 1 Gbit/s); --queue-maxlen overrides that.
- Start-up: the stats file appears once the queue is bound; add the iptables rule after that.
- SIGHUP: re-read the spec file. Packets already read keep their release times; new packets get
  the new spec (but never leave before older ones). A bad file is logged and the old spec stays
  in force (stats: spec_error names file and field).
- SIGTERM / SIGINT: accept every queued packet at once, unbind, write the stats, exit 0. Remove
  the iptables rule first: once the queue is unbound, packets the rule still sends are dropped.
- Exit codes: 0 after SIGTERM / SIGINT; 2 bad arguments or spec file at start (message names
  them); 3 the queue cannot be bound (no CAP_NET_ADMIN, or another process holds queue N);
  1 a fatal error while running (it first tries to accept what it holds). A dead delayer
  black-holes the link (the rule has no --queue-bypass): loud, never silently undelayed.
- Log: one line per event on stdout, errors on stderr, each prefixed `delayer[N]`.
- Stats file: one JSON object, replaced atomically about once a second:
    time (unix s), pid, queue_num, uptime_s, spec (in force), spec_error (null or the message),
    gso (bool), queue_maxlen,
    packets_seen, released, dropped_loss (NF_DROP by the loss draw), unstamped (packets without
    a kernel receive stamp, dated by our own receive instead),
    queued (held by the kernel now, read or not), scheduled (read, waiting for release),
    overflow_drops (queue full; /proc/net/netfilter/nfnetlink_queue), socket_drops (our socket
    buffer full; same file), enobufs (such overflows we were told of), refused_verdicts,
    late_ms and timer_late_ms: {mean, p50, p99} of (actual release - due) and (actual release -
    scheduled release) over the last interval (each null when no packet left),
    late_hist_counts: packets per bucket of timer lateness since start (buckets: lateness.EDGES_MS;
    the sidecar sums them over the run, `lateness.Tally`), late_over_tolerance: releases since start
    whose timer lateness exceeded lateness.tolerance_ms of the delay in force,
    cpu_pct, cpu_user_pct: % of one core over the last interval.
  Every *_drops, enobufs and refused_verdicts above 0 means packets were lost that the spec did
  not ask for: the run's figures are suspect.

Delay model. Packet i arriving at a_i (the kernel's receive stamp, so our own wake-up and parsing
time are part of the delay, not added to it) is due at d_i = a_i + max(0, delay + J_i) with
J_i ~ Normal(0, jitter) from a seeded RNG (truncated at zero total delay; the presets keep
jitter <= delay, so the truncation rarely binds). Packets leave in arrival order:
r_i = max(d_i, r_(i-1)). Order is what lets one "accept every id <= N" verdict release a whole
batch; its price is that with jitter a packet also waits for a slower predecessor, which skews
the delay up and the jitter down as packets get closer than the jitter (DESIGN.md measured TCP
RTT 56.6 ms for 50 +- 10 ms; probes 10 ms apart at 20 +- 5 ms: +0.25 ms). With jitter 0,
r_i = d_i exactly. The loop sleeps in select() until the next r_i and sends one verdict for all
that are due; `late_ms` in the stats shows the timer error plus that skew. Under CPU contention
releases come late by milliseconds (the stats show it): watch cpu_pct and the machine's load.

Loss. When loss_pct > 0 the queue runs without NFQA_CFG_F_GSO, so the kernel splits 64 KB GSO
aggregates into wire-size segments and each segment is dropped with probability loss_pct/100
(an NF_DROP verdict as soon as it is read, from its own seeded RNG: changing the jitter does not
change which packets are lost). With GSO on, one drop would take ~40 segments at once. Segments
cost 10-15x the CPU per Mbit/s, so with loss 0 the GSO flag is on.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import resource
import select
import signal
import socket
import sys
import time
from collections import deque
from dataclasses import asdict, dataclass

from . import lateness, nfqueue
from .sizing import IP_PACKET_BYTES, SIZING_MBIT

EXIT_OK, EXIT_RUNTIME, EXIT_USAGE, EXIT_QUEUE = 0, 1, 2, 3
STATS_INTERVAL_S = 1.0
MIN_QUEUE = 1024  # the kernel's default nfnetlink queue length (not the qdiscs' MIN_QUEUE_PACKETS)
SPEC_NOW = "spec now"  # begins the line logged after each SIGHUP (the sidecar logs traced links' at debug)
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # 35 on x86 and arm; the module lacks it before 3.14


class SpecError(ValueError):
    """A spec file that cannot be used; the message names the file and the field."""


@dataclass(frozen=True)
class Spec:
    delay_ms: float  # added one-way delay
    jitter_ms: float  # stdev of the normal jitter added to the delay
    loss_pct: float  # share of packets dropped, 0-100
    rate_mbit: float | None  # the link's rate cap (applied by a tbf), used here only to size the queue


def load_spec(path: str) -> Spec:
    """The spec in the file; SpecError naming the file and the field when it cannot be used."""
    try:
        with open(path) as f:
            raw = json.load(f)
    except (OSError, ValueError) as e:
        raise SpecError(f"{path}: cannot read spec: {e}") from None
    if not isinstance(raw, dict):
        raise SpecError(f"{path}: expected a JSON object, got {type(raw).__name__}")
    fields = Spec.__dataclass_fields__
    unknown = sorted(raw.keys() - fields.keys())
    if unknown:
        raise SpecError(f"{path}: {unknown[0]}: unknown field (known: {', '.join(fields)})")
    values = {}
    for key in fields:
        if key not in raw:
            raise SpecError(f"{path}: {key}: missing")
        value = raw[key]
        if value is None and key == "rate_mbit":
            values[key] = None
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise SpecError(f"{path}: {key}: expected a finite number, got {value!r}")
        values[key] = float(value)
    spec = Spec(**values)
    if spec.delay_ms < 0 or spec.jitter_ms < 0:
        raise SpecError(f"{path}: {'delay_ms' if spec.delay_ms < 0 else 'jitter_ms'}: must be >= 0")
    if not 0 <= spec.loss_pct <= 100:
        raise SpecError(f"{path}: loss_pct: must be within 0-100, got {spec.loss_pct}")
    if spec.rate_mbit is not None and spec.rate_mbit <= 0:
        raise SpecError(f"{path}: rate_mbit: must be > 0 or null, got {spec.rate_mbit}")
    return spec


def queue_maxlen(spec: Spec) -> int:
    """Packets the kernel queue must hold: everything that arrives within one (delay + 4 jitter
    + 10 ms of slack), at the rate cap in wire-size packets, twice over for bursts. The default
    1024 caps 1500-byte traffic at ~245 Mbit/s at 50 ms; an overflow is a drop (never a bypass)."""
    rate_bps = (spec.rate_mbit or SIZING_MBIT) * 1e6
    hold_s = (spec.delay_ms + 4 * spec.jitter_ms + 10) / 1000
    return max(MIN_QUEUE, math.ceil(2 * rate_bps / (8 * IP_PACKET_BYTES) * hold_s))


class Timeline:
    """The pure part: when each arriving packet leaves, or that it is dropped."""

    def __init__(self, spec: Spec, seed: int):
        self.spec = spec
        self._jitter = random.Random(f"{seed}:jitter")
        self._loss = random.Random(f"{seed}:loss")
        self.last_release = 0.0

    def admit(self, arrival: float) -> tuple[float, float] | None:
        """(due, release) times in seconds for a packet arriving at `arrival`; None = drop it."""
        spec = self.spec
        if spec.loss_pct and self._loss.random() * 100 < spec.loss_pct:
            return None
        delay_ms = spec.delay_ms
        if spec.jitter_ms:
            delay_ms = max(0.0, delay_ms + self._jitter.gauss(0.0, spec.jitter_ms))
        due = arrival + delay_ms / 1000
        release = due if due > self.last_release else self.last_release
        self.last_release = release
        return due, release


def _summary_ms(samples: list[float]) -> dict:
    if not samples:
        return {"mean": None, "p50": None, "p99": None}
    samples.sort()
    n = len(samples)
    return {"mean": 1000 * sum(samples) / n, "p50": 1000 * samples[n // 2],
            "p99": 1000 * samples[min(n - 1, int(0.99 * n))]}


class Delayer:
    def __init__(self, args: argparse.Namespace, spec: Spec, log):
        self.args = args
        self.log = log
        self.spec = spec
        self.timeline = Timeline(spec, args.seed)
        self.maxlen = args.queue_maxlen or queue_maxlen(spec)
        self.gso = spec.loss_pct == 0
        self.queue = nfqueue.Queue(args.queue_num, self.maxlen, self.gso)
        self.pending: deque[tuple[float, float, int]] = deque()  # (release, due, id), release order
        self.seen = self.released = self.dropped_loss = self.unstamped = 0
        self.stamped = False  # the last packet carried the kernel's receive time
        # Any socket asking for receive timestamps makes the kernel stamp every incoming packet
        # (a host-wide switch, on for as long as one such socket is open), and nfnetlink_queue
        # passes the stamp on as NFQA_TIMESTAMP.
        self._stamps = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._stamps.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        self.late: list[float] = []  # actual release - due, this stats interval
        self.timer_late: list[float] = []  # actual release - scheduled release, this interval
        self.late_hist = [0] * len(lateness.EDGES_MS)  # timer lateness since start
        self.late_over_tolerance = 0
        self.spec_error: str | None = None
        self._stats_error: str | None = None
        self.started = time.monotonic()
        self._cpu_mark = (self.started, self._cpu_seconds())

    @staticmethod
    def _cpu_seconds() -> tuple[float, float]:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime, usage.ru_stime

    def arrive(self) -> None:
        packets = self.queue.receive()
        now = time.monotonic()
        realtime_offset = time.time() - now
        admit = self.timeline.admit
        drops = []
        for packet in packets:
            # The kernel's receive time, so that our own wake-up and parsing delay is part of the
            # delay, not added to it; our receive time when the packet carries no stamp.
            if packet.timestamp is None:
                arrival = now
                self.unstamped += 1
            else:
                arrival = min(now, packet.timestamp - realtime_offset)
            self.stamped = packet.timestamp is not None
            plan = admit(arrival)
            if plan is None:
                drops.append(nfqueue.verdict(self.args.queue_num, packet.id, nfqueue.NF_DROP))
            else:
                self.pending.append((plan[1], plan[0], packet.id))
        self.seen += len(packets)
        if drops:  # now, before any batch verdict could accept them
            self.dropped_loss += len(drops)
            self.queue.send(b"".join(drops))

    def release_due(self) -> None:
        """Accept every packet whose release time has come, with one batch verdict."""
        pending = self.pending
        now = time.monotonic()
        last = None
        tolerance_s = lateness.tolerance_ms(self.spec.delay_ms) / 1000
        while pending and pending[0][0] <= now:
            release, due, last = pending.popleft()
            self.late.append(now - due)
            self.timer_late.append(now - release)
            self.late_hist[lateness.bucket(1000 * (now - release))] += 1
            self.late_over_tolerance += now - release > tolerance_s
            self.released += 1
        if last is not None:
            self.queue.send(nfqueue.verdict(self.args.queue_num, last, nfqueue.NF_ACCEPT, batch=True))

    def release_all(self) -> int:
        """Accept everything queued, read or not; return how many packets that was."""
        for packet in self.queue.receive():
            self.pending.append((0.0, 0.0, packet.id))
            self.seen += 1
        count = len(self.pending)
        if count:
            last = self.pending[-1][2]
            self.released += count
            self.pending.clear()
            self.queue.send(nfqueue.verdict(self.args.queue_num, last, nfqueue.NF_ACCEPT, batch=True))
        return count

    def reload(self) -> None:
        try:
            spec = load_spec(self.args.spec_file)
        except SpecError as e:
            self.spec_error = str(e)
            self.log(f"spec not changed, still {asdict(self.spec)}: {e}", error=True)
            return
        self.spec_error = None
        maxlen = self.args.queue_maxlen or queue_maxlen(spec)
        gso = spec.loss_pct == 0
        if (maxlen, gso) != (self.maxlen, self.gso):
            self.queue.configure(maxlen, gso)
            self.maxlen, self.gso = maxlen, gso
        self.spec = self.timeline.spec = spec
        self.log(f"{SPEC_NOW} {asdict(spec)} (queue_maxlen {maxlen}, gso {'on' if gso else 'off'})")

    def stats(self) -> dict:
        """What the stats file holds. Counters are totals since start; late_ms, timer_late_ms and
        cpu_* cover the last interval (about a second). cpu_pct is % of one core, user plus
        system time; the system part includes the kernel's own work on each released packet
        (a verdict re-injects it, and the stack carries it up to its socket in our context)."""
        now = time.monotonic()
        (user, system), (then, (user0, system0)) = self._cpu_seconds(), self._cpu_mark
        self._cpu_mark = (now, (user, system))
        per_pct = 100 / max(1e-9, now - then)
        counters = nfqueue.read_counters(self.args.queue_num)
        out = {
            "time": time.time(),
            "pid": os.getpid(),
            "queue_num": self.args.queue_num,
            "uptime_s": now - self.started,
            "spec": asdict(self.spec),
            "spec_error": self.spec_error,
            "gso": self.gso,
            "queue_maxlen": self.maxlen,
            "packets_seen": self.seen,
            "released": self.released,
            "dropped_loss": self.dropped_loss,
            "unstamped": self.unstamped,
            "queued": counters.queue_total if counters else None,  # held by the kernel, read or not
            "scheduled": len(self.pending),  # read, and waiting for their release time
            "overflow_drops": counters.queue_dropped if counters else None,
            "socket_drops": counters.user_dropped if counters else None,
            "enobufs": self.queue.enobufs,
            "refused_verdicts": self.queue.refused,
            "late_ms": _summary_ms(self.late),
            "timer_late_ms": _summary_ms(self.timer_late),
            "late_hist_counts": self.late_hist,
            "late_over_tolerance": self.late_over_tolerance,
            "cpu_pct": (user - user0 + system - system0) * per_pct,
            "cpu_user_pct": (user - user0) * per_pct,
        }
        self.late, self.timer_late = [], []
        return out

    def write_stats(self) -> None:
        """Replace the stats file. A failed write is logged, not fatal: the link matters more,
        and the file's stale `time` shows the failure to whoever reads it."""
        tmp = f"{self.args.stats_file}.tmp"
        try:
            with open(tmp, "w") as f:
                json.dump(self.stats(), f)
            os.replace(tmp, self.args.stats_file)
        except OSError as e:
            if str(e) != self._stats_error:
                self.log(f"cannot write stats: {e}", error=True)
            self._stats_error = str(e)
        else:
            self._stats_error = None

    def run(self, wake: socket.socket, signals: list[int]) -> None:
        """The loop: release what is due, sleep until the next release, a packet, a signal or
        the next stats write, whichever comes first. Returns after SIGTERM / SIGINT."""
        queue_fd = self.queue.fileno()
        next_stats = time.monotonic()
        while True:
            if self.pending and self.pending[0][0] <= time.monotonic():
                self.release_due()
                if self.pending and self.stamped:
                    self.arrive()
            now = time.monotonic()
            if now >= next_stats:
                self.write_stats()
                next_stats = now + STATS_INTERVAL_S
            wake_at = min(next_stats, self.pending[0][0]) if self.pending else next_stats
            # While packets wait, one that arrives now leaves after them (order), so reading it at
            # the next release loses nothing when the kernel stamped its arrival: one wake-up per
            # release instead of one per arrival plus one per release.
            watch = [wake] if self.pending and self.stamped else [queue_fd, wake]
            readable, _, _ = select.select(watch, [], [], max(0.0, wake_at - now))
            if wake in readable:
                wake.recv(64)
            while signals:
                sig = signals.pop(0)
                if sig == signal.SIGHUP:
                    self.reload()
                else:
                    released = self.release_all()
                    self.log(f"{signal.Signals(sig).name}: released the {released} packets queued")
                    return
            if queue_fd in readable:
                self.arrive()


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python3 -m dist_llm_train.netem.delayer",
                                description="Delay, jitter and drop the packets of one NFQUEUE.")
    p.add_argument("--queue-num", type=int, required=True, help="the NFQUEUE number the iptables rule uses")
    p.add_argument("--spec-file", required=True, help="JSON spec; re-read on SIGHUP")
    p.add_argument("--stats-file", required=True, help="JSON stats, replaced about once a second")
    p.add_argument("--seed", type=int, default=0, help="seeds the jitter and loss draws")
    p.add_argument("--queue-maxlen", type=int, default=None,
                   help="kernel queue length in packets (default: from the bandwidth-delay product)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)

    def log(text: str, error: bool = False) -> None:
        print(f"delayer[{args.queue_num}] {text}", file=sys.stderr if error else sys.stdout, flush=True)

    if not 0 <= args.queue_num <= 65535:
        log(f"--queue-num: must be within 0-65535, got {args.queue_num}", error=True)
        return EXIT_USAGE
    if args.queue_maxlen is not None and args.queue_maxlen < 1:
        log(f"--queue-maxlen: must be >= 1, got {args.queue_maxlen}", error=True)
        return EXIT_USAGE
    try:
        spec = load_spec(args.spec_file)
        with open(f"{args.stats_file}.tmp", "w"):  # fail now, not at the first stats write
            pass
    except (SpecError, OSError) as e:
        log(f"fatal: {e}", error=True)
        return EXIT_USAGE

    # Signals reach the loop through a socket select() watches, so SIGHUP and SIGTERM act at once.
    signals: list[int] = []
    wake_r, wake_w = socket.socketpair()
    wake_r.setblocking(False)
    wake_w.setblocking(False)
    signal.set_wakeup_fd(wake_w.fileno(), warn_on_full_buffer=False)
    for sig in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, _frame: signals.append(signum))

    try:
        delayer = Delayer(args, spec, log)
    except OSError as e:
        log(f"fatal: cannot bind NFQUEUE {args.queue_num}: {e} (needs CAP_NET_ADMIN; one process per queue)",
            error=True)
        return EXIT_QUEUE
    log(f"bound; spec {asdict(spec)}, queue_maxlen {delayer.maxlen}, gso {'on' if delayer.gso else 'off'}")
    try:
        delayer.run(wake_r, signals)
        delayer.write_stats()
        delayer.queue.close()
    except Exception as e:  # noqa: BLE001 - any failure here must end the process loudly
        log(f"fatal: {type(e).__name__}: {e}", error=True)
        try:
            delayer.release_all()
        except OSError:
            pass
        return EXIT_RUNTIME
    log(f"stopped after {delayer.seen} packets ({delayer.dropped_loss} dropped by loss)")
    return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
