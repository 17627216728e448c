"""Bytes each container's interface carried during the run, read by the sidecar outside every trainer.

Where: `/proc/net/dev` read inside the container's network namespace (by its helper's agent, helpers.py) shows
that namespace's counters, so no trainer's own report enters the figure, and builtin and hivemind runs are
counted the same way.

What a byte is: the kernel's rx_bytes / tx_bytes of the container's `eth0` (its veth end): every Ethernet frame
with its 14-byte header and everything inside (IP, TCP, TLS / ZMTP / libp2p framing, retransmissions, ACKs, DNS,
the control plane's HTTP), without preamble or FCS (a veth has none). A TCP aggregate of segmentation offload
counts as the kernel hands it over (one set of headers per aggregate of up to 64 KB, not per 1500-byte segment),
so a bulk transfer counts about 3-4 % fewer header bytes than separate frames would. rx counts what reached the
interface, including packets the userspace delayer then drops for the preset's loss; tx counts what left it,
after the rate limiter (a packet tbf drops is not counted).

When: from the sidecar's first `ready` (after its fidelity probe, whose traffic is excluded) to its latest report
(every 2 s: up to that much of the run's last traffic can be missing from a row). A container that (re)starts
after that counts from zero (a new namespace, new counters); one that goes away keeps what it had counted.

Up and down are the containers' own directions: a worker's tx is its upload (to the PS, to other peers, to the
controller), its rx its download. In a peer-to-peer run every byte between two workers is one worker's up and
another's down.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path

from .backends.base import ns_read

INTERFACE = "eth0"
FIELDS = ("rx_bytes", "rx_packets", "tx_bytes", "tx_packets")
SERIES_COLUMNS = ("t_s", "worker_tx_bytes", "worker_rx_bytes", "ps_tx_bytes", "ps_rx_bytes")


def parse_net_dev(text: str, interface: str = INTERFACE) -> dict[str, int] | None:
    """The rx/tx bytes and packets of `interface` in the text of /proc/net/dev; None if it is not there.
    Columns after 'name:': 8 receive fields (bytes, packets, ...), then 8 transmit fields (bytes, packets, ...)."""
    for line in text.splitlines():
        name, sep, rest = line.partition(":")
        if sep and name.strip() == interface:
            values = rest.split()
            if len(values) < 16:
                return None
            return {"rx_bytes": int(values[0]), "rx_packets": int(values[1]),
                    "tx_bytes": int(values[8]), "tx_packets": int(values[9])}
    return None


def read_counters(netns: str, interface: str = INTERFACE) -> dict[str, int] | None:
    """The counters of `interface` in the namespace `netns` names (backends.base.ns_read); None if it is gone."""
    text = ns_read(netns, "/proc/net/dev")
    return None if text is None else parse_net_dev(text, interface)


@dataclass
class Counted:
    label: str
    role: str
    start: dict[str, int]  # the counters when counting began for this namespace
    last: dict[str, int]


@dataclass
class InterfaceTally:
    """Counters of every namespace seen since the run started: key = (container id, pid), one namespace."""

    started: bool = False
    seen: dict[tuple[str, int], Counted] = field(default_factory=dict)

    def start(self, containers: list[tuple[str, int, str, str, str]]) -> None:
        """Begin counting now, from the current counters of the (id, pid, label, role, netns) containers present."""
        self.started = True
        for cid, pid, label, role, netns in containers:
            now = read_counters(netns)
            if now is not None:
                self.seen[(cid, pid)] = Counted(label, role, now, now)

    def update(self, containers: list[tuple[str, int, str, str, str]]) -> None:
        """Read the containers present now; a namespace first seen after the start counts from zero."""
        if not self.started:
            return
        for cid, pid, label, role, netns in containers:
            now = read_counters(netns)
            if now is None:
                continue
            counted = self.seen.get((cid, pid))
            if counted is None:
                self.seen[(cid, pid)] = Counted(label, role, dict.fromkeys(FIELDS, 0), now)
            else:
                counted.last = now

    def summary(self) -> dict | None:
        """Per role (controller, ps, worker) and per container label: rx/tx bytes and packets since the start;
        None before the start."""
        if not self.started:
            return None
        roles: dict[str, dict[str, int]] = {}
        containers: dict[str, dict[str, int]] = {}
        for counted in self.seen.values():
            delta = {k: max(0, counted.last[k] - counted.start[k]) for k in FIELDS}
            total = roles.setdefault(counted.role, dict.fromkeys(FIELDS, 0))
            mine = containers.setdefault(counted.label, dict.fromkeys(FIELDS, 0))
            for k in FIELDS:
                total[k] += delta[k]
                mine[k] += delta[k]
        return {"interface": INTERFACE, "roles": roles, "containers": containers}


def append_series(path: Path, t_s: float, summary: dict | None) -> None:
    """One line of runs/<run_id>/interfaces.csv (SERIES_COLUMNS): the workers' and the PS's bytes since the start
    at t_s seconds after it (the report draws validation loss against bytes from it). Nothing before the start."""
    if summary is None:
        return
    roles = summary["roles"]
    cells = [f"{t_s:.3f}"] + [str(roles.get(role, {}).get(k, 0)) for role in ("worker", "ps")
                              for k in ("tx_bytes", "rx_bytes")]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    if not path.exists():
        writer.writerow(SERIES_COLUMNS)
    writer.writerow(cells)
    with open(path, "a") as fh:
        fh.write(out.getvalue())
