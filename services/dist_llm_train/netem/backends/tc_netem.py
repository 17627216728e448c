"""The netem backend: the kernel's sch_netem on eth0's egress (the leaf of the link class) does
delay, jitter, loss and rate:

    tc qdisc replace dev eth0 parent 1:1 netem delay 50ms 5ms distribution normal loss 1% rate 10000000bit limit L

plus the rate cap on ingress through the ifb (base.py). netem's `limit` (packets held, 1000 by
default) must cover everything in flight: at the rate (or SIZING_MBIT without a cap), every
packet that arrives during the delay + 4 jitter, plus the rate queue (`queue_seconds`); a
smaller limit silently drops at high bandwidth-delay products. A link with `queue_packets` gets
exactly what is in flight during the delay + 4 jitter, plus those packets: its DropTail queue.
"""

from __future__ import annotations

import math

from ..preset import LinkSpec
from ..sizing import FRAME_BYTES, SIZING_MBIT
from .base import MIN_QUEUE_PACKETS, Backend, ms_arg, queue_seconds, rate_arg


def netem_limit(link: LinkSpec) -> int:
    packets_per_s = (link.rate_mbit or SIZING_MBIT) * 1e6 / 8 / FRAME_BYTES
    delay_s = (link.delay_ms + 4 * link.jitter_ms) / 1000
    if link.queue_packets is not None:  # what is in flight in the delay line, plus the preset's rate queue
        return math.ceil(packets_per_s * delay_s) + link.queue_packets
    return max(MIN_QUEUE_PACKETS, math.ceil(2 * packets_per_s * (delay_s + queue_seconds(link))))


class NetemBackend(Backend):
    name = "netem"

    def egress_leaf(self, link: LinkSpec) -> list[str]:
        args = ["netem", "delay", ms_arg(link.delay_ms)]
        if link.jitter_ms:
            args += [ms_arg(link.jitter_ms), "distribution", "normal"]
        if link.loss_pct:
            args += ["loss", f"{link.loss_pct:g}%"]
        if link.rate_mbit is not None:
            args += ["rate", rate_arg(link.rate_mbit)]
        return args + ["limit", str(netem_limit(link))]
