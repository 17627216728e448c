"""TCP as part of the experiment: the congestion control a container's sockets use, set and recorded.

A new network namespace starts with the host's default algorithm (`net.ipv4.tcp_congestion_control`:
BBR on some machines, CUBIC on most distributions), and on a lossy path that choice alone moves one
flow's goodput by 100x (BBR ignores random loss; CUBIC and Reno back off at each one, about
MSS / RTT x sqrt(3/2) / sqrt(p), `mathis_mbit`). So a preset says which algorithm each container uses
(`tcp.congestion_control`, default cubic), the sidecar sets it in every container's namespace before
the run starts (`commands`), reads back what is in force (`read_settings`) and reports it; the row's
`tcp_cc` and run.json record it.

The kernel lets a namespace other than the host's choose only the algorithms listed in the host's
`net.ipv4.tcp_allowed_congestion_control` (EPERM for the others, even as root). `host_problem` says so
before anything starts, with the one host command that allows the algorithm (`make up` runs it through
`dist-llm-train check`); the choice `host` sets nothing and records the inherited default.
"""

from __future__ import annotations

import math
import subprocess
from pathlib import Path

from .backends.base import Argv, LinkError, ns_run
from .preset import Preset, TcpSpec

PROC = Path("/proc/sys/net/ipv4")
# What run.json records of each namespace, by the name used there.
SETTINGS = {"congestion_control": "tcp_congestion_control", "rmem": "tcp_rmem", "wmem": "tcp_wmem",
            "ecn": "tcp_ecn", "sack": "tcp_sack"}
MSS_BYTES = 1448  # payload of a 1500-byte MTU segment with timestamps (what Linux sends on the bridge)
MATHIS_C = math.sqrt(1.5)  # periodic loss, delayed ACKs off (Mathis et al. 1997): about 1.22


def commands(tcp: TcpSpec) -> list[Argv]:
    """What sets `tcp` in a namespace (run inside it); nothing for `host`."""
    if tcp.congestion_control == "host":
        return []
    return [("sysctl", "-q", "-w", f"net.ipv4.tcp_congestion_control={tcp.congestion_control}")]


def read_settings(netns: str, timeout_s: float = 10.0) -> dict[str, str]:
    """The namespace's TCP settings in force (SETTINGS), as the kernel prints them; LinkError if unreadable."""
    files = [str(PROC / name) for name in SETTINGS.values()]
    try:
        done = ns_run(netns, ["cat", *files], timeout_s)
    except subprocess.TimeoutExpired:
        raise LinkError(f"{netns}: reading the TCP settings took over {timeout_s:g} s") from None
    lines = done.stdout.splitlines()
    if done.returncode or len(lines) != len(SETTINGS):
        raise LinkError(f"{netns}: cannot read the TCP settings: {done.stderr.strip() or done.stdout.strip()}")
    return {key: " ".join(line.split()) for key, line in zip(SETTINGS, lines)}


def host_lists(proc: Path = PROC) -> tuple[list[str], list[str]]:
    """(allowed, available) congestion controls of the kernel, as any namespace can read them."""
    def words(name: str) -> list[str]:
        try:
            return (proc / name).read_text().split()
        except OSError:
            return []
    return words("tcp_allowed_congestion_control"), words("tcp_available_congestion_control")


def host_problem(choices: dict[str, str], source: str, allowed: list[str], available: list[str]) -> str | None:
    """Why a container could not use an algorithm the preset asks for (`choices`: algorithm -> field),
    with what to run on the host; None when every one can be set."""
    for algorithm, field in choices.items():
        if algorithm in allowed:
            continue
        if algorithm not in available:
            return (f"{source}: {field}: {algorithm} is not available in this kernel (available: "
                    f"{' '.join(available) or 'unknown'}); if it is a module, load it on the host: "
                    f"sudo modprobe tcp_{algorithm}; or choose another algorithm (or 'host')")
        wanted = " ".join([*allowed, algorithm])
        return (f"{source}: {field}: {algorithm} is not in this host's net.ipv4.tcp_allowed_congestion_control "
                f"({' '.join(allowed) or 'empty'}), and a container may choose only those. Allow it on the host: "
                f"sudo sysctl -w net.ipv4.tcp_allowed_congestion_control=\"{wanted}\" "
                "(or run with TCP_CC=host to keep, and record, the host's default)")
    return None


def preset_problem(preset: Preset, proc: Path = PROC) -> str | None:
    """`host_problem` for a preset on this host's kernel (any namespace reads the same lists)."""
    return host_problem(preset.tcp_choices(), preset.source, *host_lists(proc))


def mathis_mbit(rtt_ms: float, loss_pct: float, mss_bytes: int = MSS_BYTES) -> float | None:
    """One loss-based TCP flow's goodput bound, MSS / RTT x C / sqrt(p), in Mbit/s; None without loss or delay."""
    if loss_pct <= 0 or rtt_ms <= 0:
        return None
    return mss_bytes * 8 / (rtt_ms / 1000) * MATHIS_C / math.sqrt(loss_pct / 100) / 1e6
