"""The userspace backend, for kernels without sch_netem: tbf for the rate cap (egress root, and
the ifb for ingress, as in base.py), and the NFQUEUE delayer for delay, jitter and loss.

The delayer (`python3 -m dist_llm_train.netem.delayer`) runs inside the target's namespace and
takes the packets of queue QUEUE_NUM, which one rule feeds from the receive path:

    iptables-nft -t mangle -A PREROUTING -i eth0 -m comment --comment dist-llm-train -j NFQUEUE --queue-num 42

On ingress, never OUTPUT: a packet held in the sender's own OUTPUT still counts against its TCP
socket, and one stream through 50 ms collapses to ~2 Mbit/s (DESIGN.md). The rule has no
`--queue-bypass`: while no delayer listens, the link is black-holed (loud), never passed
undelayed (silent); the sidecar notices a dead delayer and says so.

iptables-nft, not iptables-legacy: both accept NFQUEUE here, but Docker writes its own rules in
every container's namespace (embedded DNS) with the host's variant, nf_tables on Debian 12 and 13
and on this machine; one variant per namespace keeps `iptables-nft -S` / `nft list ruleset` the
whole truth and avoids the "legacy tables present" mix, and the legacy xtables interface is
optional in recent kernels.

Order, kept by the sidecar: the delayer binds its queue before `apply` adds the rule, and
`remove` deletes the rule before the delayer is stopped (it then releases what it holds).
"""

from __future__ import annotations

from ..preset import LinkSpec
from .base import IFACE, MIN_QUEUE_PACKETS, Argv, Backend, tbf_args

QUEUE_NUM = 42  # nfnetlink queues are per network namespace: every target can use the same number
IPTABLES = "iptables-nft"
RULE = ("-t", "mangle", "{op}", "PREROUTING", "-i", IFACE, "-m", "comment", "--comment", "dist-llm-train",
        "-j", "NFQUEUE", "--queue-num", str(QUEUE_NUM))


def nfqueue_rule(op: str) -> Argv:
    return (IPTABLES, *(op if part == "{op}" else part for part in RULE))


def delayer_argv(python: str, spec_file: str, stats_file: str, seed: int) -> list[str]:
    """The delayer process (run inside the namespace); it sizes its queue from the spec."""
    return [python, "-m", "dist_llm_train.netem.delayer", "--queue-num", str(QUEUE_NUM),
            "--spec-file", spec_file, "--stats-file", stats_file, "--seed", str(seed)]


class UserspaceBackend(Backend):
    name = "userspace"

    def egress_leaf(self, link: LinkSpec) -> list[str]:
        if link.rate_mbit is None:
            return ["pfifo", "limit", str(MIN_QUEUE_PACKETS)]
        return tbf_args(link)

    def apply(self, link: LinkSpec) -> list[Argv]:
        return [*super().apply(link), nfqueue_rule("-A")]

    def remove(self) -> list[Argv]:
        return [nfqueue_rule("-D"), *super().remove()]

    def delayer_spec(self, link: LinkSpec) -> dict:
        # rate_mbit only sizes the delayer's kernel queue: the ifb's tbf has already capped
        # what reaches it. A down link never reaches it (blackhole on the ifb).
        return {"delay_ms": link.delay_ms, "jitter_ms": link.jitter_ms, "loss_pct": link.loss_pct,
                "rate_mbit": link.rate_mbit}

    def inspect(self) -> list[Argv]:
        return [*super().inspect(), (IPTABLES, "-t", "mangle", "-S", "PREROUTING")]
