"""Measurement traffic: UDP echo (RTT, jitter, loss) and bulk TCP (throughput), standard library only.

Used by the delayer's tests and benchmark and by the fidelity probe. Each server prints `ready`
on stdout once it listens, so a parent process can wait for it; each client returns its figures
(and the command line prints them as one JSON line).

    python3 -m dist_llm_train.netem.traffic udp-echo --port 7001
    python3 -m dist_llm_train.netem.traffic udp-probe --host H --port 7001 --count 500 --interval 0.01
    python3 -m dist_llm_train.netem.traffic tcp-sink --port 7002
    python3 -m dist_llm_train.netem.traffic tcp-send --host H --port 7002 --seconds 3
"""

from __future__ import annotations

import argparse
import fcntl
import json
import select
import socket
import statistics
import struct
import termios
import threading
import time

_PROBE = struct.Struct("!QQ")  # sequence number, send time (ns, monotonic clock of the sender)
CHUNK = 1 << 16
SO_MAX_PACING_RATE = 47  # Linux; bytes/s; TCP paces itself to it (no fq qdisc needed since 4.13)


def udp_echo_server(port: int, host: str = "0.0.0.0", ready=lambda: None) -> None:
    """Send every datagram back to its sender, forever."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((host, port))
        ready()
        while True:
            data, peer = sock.recvfrom(65535)
            sock.sendto(data, peer)


def udp_rtt_probe(host: str, port: int, count: int, interval_s: float, size: int = 64,
                  timeout_s: float = 1.0) -> list[float | None]:
    """Send `count` probes `interval_s` apart (on a fixed schedule, not after each reply) and
    return each one's RTT in ms, None for a probe whose reply never came within `timeout_s` of
    the last send. Replies are matched by sequence number, so reordering is harmless."""
    rtts: list[float | None] = [None] * count
    padding = b"\0" * max(0, size - _PROBE.size)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.connect((host, port))
        start = time.monotonic()
        sent = 0
        deadline = start + count * interval_s + timeout_s
        while True:
            now = time.monotonic()
            if sent < count and now >= start + sent * interval_s:
                try:
                    sock.send(_PROBE.pack(sent, time.monotonic_ns()) + padding)
                except ConnectionRefusedError:  # an earlier probe met a closed port; this one is lost
                    pass
                sent += 1
                continue
            wake = start + sent * interval_s if sent < count else deadline
            if now >= deadline:
                return rtts
            readable, _, _ = select.select([sock], [], [], max(0.0, wake - now))
            if readable:
                try:
                    data = sock.recv(65535)
                except ConnectionRefusedError:
                    continue
                seq, sent_ns = _PROBE.unpack_from(data)
                if seq < count:
                    rtts[seq] = (time.monotonic_ns() - sent_ns) / 1e6


def rtt_summary(rtts: list[float | None]) -> dict:
    """Mean, stdev, median and p99 RTT (ms) of the answered probes, and the loss in %."""
    got = sorted(r for r in rtts if r is not None)
    loss_pct = 100.0 * (len(rtts) - len(got)) / len(rtts) if rtts else 0.0
    if not got:
        return {"count": len(rtts), "mean_ms": None, "stdev_ms": None, "p50_ms": None, "p99_ms": None,
                "loss_pct": loss_pct}
    return {
        "count": len(rtts),
        "mean_ms": statistics.fmean(got),
        "stdev_ms": statistics.pstdev(got),
        "p50_ms": got[len(got) // 2],
        "p99_ms": got[min(len(got) - 1, int(0.99 * len(got)))],
        "loss_pct": loss_pct,
    }


def tcp_sink(port: int, host: str = "0.0.0.0", ready=lambda: None) -> None:
    """Accept connections and discard what they send, forever (one thread per connection)."""
    def drain(conn: socket.socket) -> None:
        with conn:
            while conn.recv(1 << 20):
                pass

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as srv:
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind((host, port))
        srv.listen(16)
        ready()
        while True:
            conn, _ = srv.accept()
            threading.Thread(target=drain, args=(conn,), daemon=True).start()


def _delivered(sock: socket.socket, written: int) -> int:
    # Bytes the peer acknowledged = bytes written - bytes still in the send queue (SIOCOUTQ, which
    # equals TIOCOUTQ on Linux). Counting only writes would credit up to a whole send buffer
    # (megabytes at a high bandwidth-delay product) that never crossed the link.
    outq = struct.unpack("i", fcntl.ioctl(sock, termios.TIOCOUTQ, b"\0" * 4))[0]
    return written - outq


def tcp_bulk_send(host: str, port: int, seconds: float, warmup_s: float = 1.0,
                  pace_mbit: float | None = None, congestion_control: str | None = None) -> dict:
    """Send as fast as TCP allows (or at most `pace_mbit`, paced by the kernel) for
    `warmup_s + seconds`; return {mbit: acknowledged by the peer during the last `seconds` (the
    warm-up leaves slow start out of the figure), congestion_control: the socket's algorithm}.
    `congestion_control` chooses it for this socket (the namespace's default otherwise); an
    algorithm outside the host's allowed list needs CAP_NET_ADMIN (OSError EPERM without)."""
    payload = b"\0" * CHUNK
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        if congestion_control is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, congestion_control.encode())
        sock.settimeout(10)
        sock.connect((host, port))
        algorithm = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, 16).rstrip(b"\0").decode()
        if pace_mbit is not None:
            sock.setsockopt(socket.SOL_SOCKET, SO_MAX_PACING_RATE, round(pace_mbit * 1e6 / 8))
        sock.settimeout(0.2)
        written = 0
        start = time.monotonic()
        mark = None
        while True:
            now = time.monotonic()
            if mark is None and now >= start + warmup_s:
                mark = (now, _delivered(sock, written))
            if mark is not None and now >= mark[0] + seconds:
                mbit = (_delivered(sock, written) - mark[1]) * 8 / (now - mark[0]) / 1e6
                return {"mbit": mbit, "congestion_control": algorithm}
            try:
                written += sock.send(payload)
            except TimeoutError:  # a stalled link still ends on time; the figure shows the stall
                continue


def _ready() -> None:
    print("ready", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m dist_llm_train.netem.traffic", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("udp-echo", "tcp-sink"):
        p = sub.add_parser(name)
        p.add_argument("--port", type=int, required=True)
        p.add_argument("--host", default="0.0.0.0")
    p = sub.add_parser("udp-probe")
    p.add_argument("--host", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--count", type=int, default=500)
    p.add_argument("--interval", type=float, default=0.01, help="seconds between probes")
    p.add_argument("--size", type=int, default=64, help="bytes per probe")
    p.add_argument("--samples", action="store_true", help="print every RTT, not only the summary")
    p = sub.add_parser("tcp-send")
    p.add_argument("--host", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--pace-mbit", type=float, default=None, help="pace the stream to this rate")
    p.add_argument("--congestion-control", default=None, help="TCP algorithm of this socket (default: the namespace's)")
    args = parser.parse_args(argv)
    if args.command == "udp-echo":
        udp_echo_server(args.port, args.host, _ready)
    elif args.command == "tcp-sink":
        tcp_sink(args.port, args.host, _ready)
    elif args.command == "udp-probe":
        rtts = udp_rtt_probe(args.host, args.port, args.count, args.interval, args.size)
        out = rtt_summary(rtts) | ({"rtts_ms": rtts} if args.samples else {})
        print(json.dumps(out))
    else:
        print(json.dumps(tcp_bulk_send(args.host, args.port, args.seconds, args.warmup, args.pace_mbit,
                                       args.congestion_control)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
