"""The emulation backend interface: a LinkSpec in, the argv that imposes it on one namespace out.

A backend only builds commands; the sidecar runs them inside the target's network namespace
(`run_commands`: through the helper container's agent there, agent.py, or with nsenter into a path). Both backends shape the same two points of the container's
interface, so a link is "the container's access link" either way:

    egress:  eth0 root htb 1: -- class 1:1 (default) -> leaf qdisc of the link: rate cap (tbf);
                                                        the netem backend: netem (delay, jitter, loss, rate)
                             `- class 1:2 <- u32 filter `protocol arp`: ARP is never shaped or cut
    ingress: eth0 ingress qdisc -> u32 `protocol ip` match-all -> mirred redirect -> ifb DLT_IFB ->
             its root qdisc (rate cap), then back into eth0's receive path (and netfilter PREROUTING)

A link that is `down` gets a `blackhole` leaf on both, so no IP packet passes either way, while
ARP still does: after an outage traffic resumes at once, instead of waiting up to a second for
the neighbour entries an outage of the whole interface would have expired. IPv4 only, like the
Docker bridge networks compose creates (and the NFQUEUE rule of the userspace backend).

Failure: each command either succeeds or exits non-zero with tc's / iptables' message;
`run_commands` raises `LinkError` naming the namespace, the command and that message. `remove`
commands are all attempted even when some fail (an earlier crash may have left half a setup).
"""

from __future__ import annotations

import math
import os
import subprocess
from abc import ABC, abstractmethod
from pathlib import Path
from typing import ClassVar, Sequence

from .. import agent
from ..preset import LinkSpec
from ..sizing import FRAME_BYTES

Argv = tuple[str, ...]

IFACE = "eth0"  # a compose container's only interface
IFB = "dlt-ifb0"  # the ingress-shaping device we add to each namespace (<= 15 characters)
MIN_QUEUE_PACKETS = 1000  # the kernel's default txqueuelen / netem limit
LINK_CLASS, ARP_CLASS = "1:1", "1:2"
LINE_RATE = "10gbit"  # the htb classes only sort traffic; the leaf qdiscs shape it
HTB_QUANTUM = "60000"  # bytes per round; set, or htb warns that rate / r2q is too big
TRACE_PEAK_MBIT = 10_000.0  # a traced link's tbf peak rate (see tbf_args): no shaping of its own at these rates


class LinkError(RuntimeError):
    """A command that imposes or removes a link failed; the message says where and why."""


def rate_arg(mbit: float) -> str:
    return f"{round(mbit * 1e6)}bit"  # bits/s as an integer: exact for any rate tc accepts


def ms_arg(ms: float) -> str:
    return f"{ms:g}ms"


def queue_seconds(link: LinkSpec) -> float:
    """How much time a rate limiter's queue holds: 100 ms (a typical access-link buffer) plus
    twice the container's own delay + 2 jitter. A single TCP flow keeps a link full when the
    bottleneck queue holds about a bandwidth-delay product (path RTT = own delay + the peer's), so
    this covers every pair whose peer is not much farther away than the container itself."""
    return 0.1 + 2 * (link.delay_ms + 2 * link.jitter_ms) / 1000


def queue_bytes(link: LinkSpec) -> int:
    """The rate limiter's queue in bytes: `queue_packets` frames when the preset sets it (a DropTail
    buffer, as calibrated emulators give it), else queue_seconds at the rate (at least the burst
    and two frames)."""
    assert link.rate_mbit is not None
    if link.queue_packets is not None:
        return link.queue_packets * FRAME_BYTES
    bytes_per_s = link.rate_mbit * 1e6 / 8
    return max(tbf_burst(link) + 2 * FRAME_BYTES, math.ceil(bytes_per_s * queue_seconds(link)))


def queue_packets_in_force(link: LinkSpec) -> int | None:
    """The rate limiter's queue in frames, as reported (None: no rate limiter, or the link is down)."""
    if link.rate_mbit is None or link.down:
        return None
    return link.queue_packets or queue_bytes(link) // FRAME_BYTES


def tbf_burst(link: LinkSpec) -> int:
    """5 ms at the rate (at least two frames): enough that timer and scheduling latency never starve the link."""
    assert link.rate_mbit is not None
    return max(2 * FRAME_BYTES, math.ceil(link.rate_mbit * 1e6 / 8 * 0.005))


def tbf_args(link: LinkSpec) -> list[str]:
    """tbf at the link's rate, with tbf_burst and a limit of queue_bytes.

    A traced link's tbf is moved in place to other rates, and so to other bursts; tbf never sends a
    queued packet longer than its bucket, so an aggregate (GSO/GRO, up to 64 KB) queued under a big
    burst would stall the link for good after a step down (measured: 10 s of nothing at 24 -> 6
    Mbit/s). For those links a peak bucket of two frames (`mtu`) at a peak rate far above the rate
    caps the largest packet the tbf takes whole: it splits every aggregate into frames at enqueue."""
    args = ["tbf", "rate", rate_arg(link.rate_mbit), "burst", str(tbf_burst(link)), "limit", str(queue_bytes(link))]
    if link.trace is not None:
        args += ["peakrate", rate_arg(max(TRACE_PEAK_MBIT, 2 * link.rate_mbit)), "mtu", str(2 * FRAME_BYTES)]
    return args


def ingress_root(link: LinkSpec) -> list[str]:
    """The root qdisc of the ifb: the rate cap of what the container receives."""
    if link.down:
        return ["blackhole"]
    if link.rate_mbit is None:
        return ["pfifo", "limit", str(MIN_QUEUE_PACKETS)]
    return tbf_args(link)


class Backend(ABC):
    """How a LinkSpec becomes commands. `apply` on a namespace without our rules, then any number
    of `change`, then `remove`; the sidecar runs each list in order with `run_commands`."""

    name: ClassVar[str]

    @abstractmethod
    def egress_leaf(self, link: LinkSpec) -> list[str]:
        """The qdisc under eth0's link class for this link (when it is not down)."""

    def apply(self, link: LinkSpec) -> list[Argv]:
        """Build the egress classifier and the ingress redirect, then shape both directions."""
        return [
            ("tc", "qdisc", "add", "dev", IFACE, "root", "handle", "1:", "htb", "default", "1"),
            *(("tc", "class", "add", "dev", IFACE, "parent", "1:", "classid", c, "htb", "rate", LINE_RATE,
               "quantum", HTB_QUANTUM) for c in (LINK_CLASS, ARP_CLASS)),
            ("tc", "filter", "add", "dev", IFACE, "parent", "1:", "protocol", "arp", "prio", "1",
             "u32", "match", "u32", "0", "0", "flowid", ARP_CLASS),
            ("ip", "link", "add", IFB, "type", "ifb"),
            ("ip", "link", "set", "dev", IFB, "up"),
            ("tc", "qdisc", "add", "dev", IFACE, "handle", "ffff:", "ingress"),
            ("tc", "filter", "add", "dev", IFACE, "parent", "ffff:", "protocol", "ip", "prio", "1",
             "u32", "match", "u32", "0", "0", "action", "mirred", "egress", "redirect", "dev", IFB),
            *self.change(link),  # no previous: both leaves are put in place (replace)
        ]

    def change(self, link: LinkSpec, previous: LinkSpec | None = None) -> list[Argv]:
        """Set both leaf qdiscs to `link`'s. A leaf of the same kind as `previous`'s (a tbf whose rate
        a trace step moves) is changed in place, `tc qdisc change`: its queue, counters and the
        flows through it stay. Another kind (or no previous) is replaced: packets queued in the
        old one are dropped. A leaf that stays the same is left alone.

        Except a tbf moved to a smaller bucket without a peak bucket (a phase that lowers an untraced
        link's rate): it would keep, queued, aggregates longer than its new bucket, which it never sends
        (the stall tbf_args describes). It is deleted and added again, dropping what was queued, as a
        phase boundary may (`replace` would not do: for a qdisc of the same kind the kernel changes it)."""
        commands = []
        strands = (previous is not None and link.trace is None and link.rate_mbit is not None
                   and previous.rate_mbit is not None and tbf_burst(link) < tbf_burst(previous))
        for where, leaf in ((("dev", IFACE, "parent", LINK_CLASS), self.egress_qdisc),
                            (("dev", IFB, "root"), ingress_root)):
            new, old = leaf(link), None if previous is None else leaf(previous)
            if new == old:
                continue
            same_kind = old is not None and old[0] == new[0] != "blackhole"
            if same_kind and strands and new[0] == "tbf":
                commands += [("tc", "qdisc", "del", *where), ("tc", "qdisc", "add", *where, *new)]
            else:
                commands.append(("tc", "qdisc", "change" if same_kind else "replace", *where, *new))
        return commands

    def egress_qdisc(self, link: LinkSpec) -> list[str]:
        return ["blackhole"] if link.down else self.egress_leaf(link)

    def remove(self) -> list[Argv]:
        """Delete everything `apply` added: eth0 is left with the kernel's default qdisc."""
        return [
            ("tc", "qdisc", "del", "dev", IFACE, "root"),
            ("tc", "qdisc", "del", "dev", IFACE, "ingress"),
            ("ip", "link", "del", IFB),
        ]

    def delayer_spec(self, link: LinkSpec) -> dict | None:
        """The spec file of the userspace delayer this link needs in the namespace; None: no delayer."""
        return None

    def inspect(self) -> list[Argv]:
        """Commands whose output shows what is installed (for logs, verify and tests)."""
        return [("tc", "qdisc", "show"), ("tc", "filter", "show", "dev", IFACE, "ingress")]


def in_namespace(netns: str, argv: Sequence[str]) -> list[str]:
    """argv run inside the network namespace at path `netns` (/proc/<pid>/ns/net or /run/netns/x)."""
    return ["nsenter", f"--net={netns}", "--", *argv]


def ns_popen(netns: str, argv: Sequence[str], env_extra: dict[str, str] | None = None, **kwargs):
    """argv started inside the namespace `netns` names: through its helper's agent ("agent:<socket>",
    agent.py) or with nsenter (a path). The agent's AgentProcess has the subprocess.Popen parts used here.
    The process gets its own side's environment plus `env_extra`: the sidecar's own (its credential
    among it) never reaches a helper."""
    path = agent.socket_of(netns)
    if path is not None:
        return agent.AgentProcess(path, argv, env=env_extra, **kwargs)
    env = None if env_extra is None else dict(os.environ, **env_extra)
    return subprocess.Popen(in_namespace(netns, argv), env=env, **kwargs)


def ns_run(netns: str, argv: Sequence[str], timeout_s: float = 10.0) -> subprocess.CompletedProcess:
    """argv run to its end inside the namespace, output captured as text; subprocess.TimeoutExpired
    past timeout_s (the process is killed). An unreachable agent reads as exit 255 with its message."""
    if agent.socket_of(netns) is None:
        return subprocess.run(in_namespace(netns, argv), capture_output=True, text=True, timeout=timeout_s)
    try:
        proc = ns_popen(netns, argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    except agent.AgentError as exc:
        return subprocess.CompletedProcess(list(argv), 255, "", str(exc))
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    return subprocess.CompletedProcess(list(argv), proc.returncode, out, err)


def ns_read(netns: str, name: str, timeout_s: float = 10.0) -> str | None:
    """The text of /proc file `name` as seen inside the namespace (/proc/net/*: that namespace's); None
    if it cannot be read (the namespace or its agent is gone)."""
    path = agent.socket_of(netns)
    if path is None:
        try:
            done = ns_run(netns, ["cat", name], timeout_s)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout if done.returncode == 0 else None
    try:
        return agent.read_file(path, name, timeout_s)
    except agent.AgentError:
        return None


def reachable(netns: str) -> bool:
    """Whether anything of ours can still be reached there (the held descriptor or the agent's socket)."""
    return Path(agent.socket_of(netns) or netns).exists()


def run_commands(netns: str, commands: Sequence[Argv], timeout_s: float = 10.0,
                 keep_going: bool = False) -> list[str]:
    """Run each command in the namespace, in order. Raises LinkError at the first failure, or,
    with keep_going, runs them all and returns the failures' messages."""
    failures = []
    for argv in commands:
        try:
            done = ns_run(netns, argv, timeout_s)
            error = (done.stderr.strip() or done.stdout.strip() or f"exit {done.returncode}") if done.returncode else None
        except subprocess.TimeoutExpired:
            error = f"no answer within {timeout_s:g} s"
        if error is None:
            continue
        message = f"{netns}: `{' '.join(argv)}` failed: {error}"
        if not keep_going:
            raise LinkError(message)
        failures.append(message)
    return failures
