"""compression.policy adaptive: the codec and ratio of one transfer, from what the worker measured.

`choose(link_mbit, compute_s, numel, comm_budget, min_ratio)` is the whole decision (pure). A transfer of b bytes
at the measured link rate R bit/s occupies the link for b * 8 / R seconds; it may take at most comm_budget x the
round's compute time, so its byte budget is

    B = comm_budget * compute_s * R / 8

and the choice is the most faithful codec whose payload (`Codec.payload_bytes`, for d parameters) fits B:

    none (4 d)  ->  fp16 (2 d)  ->  int8 (d + 4)  ->  topk with ratio = max(min_ratio, floor(B / 6) / d)

(top-k sends k = ratio d values of 6 bytes each, an int32 index and an fp16 value, so k = floor(B / 6) fits;
since int8 did not fit, ratio < 1/6). At the floor min_ratio the transfer takes longer than the budget: the floor is the least the
run accepts to send. The same function serves the downlink (parameters the PS sends the worker after each
update: dense `none`, or a delta in the chosen codec), each direction against the same budget.

RTT is not an input: latency is paid whatever the codec, so no codec can buy it back (under `high_rtt` with no
rate cap, top-k bought no time at all); it enters through the rate measurement, which subtracts it.

No usable measurement (R None, NaN, 0 or negative; compute_s NaN or negative): the start choice is top-k at
min_ratio, the cheapest payload, whose transfer then gives a measurement. compute_s = 0 leaves B = 0: the same.
R = inf (a link faster than anything measured) fits every codec: none.

`LinkMeter` holds one worker's smoothed measurements: RTT samples (a HELLO -> WELCOME or PING -> PONG exchange,
which carry no arrays) and transfers (the bytes of a request and its reply, both ways, over the time from send
to reply minus the time the PS says it held the request, minus the RTT). It assumes one rate for both
directions (the bytes-weighted harmonic mean when up and down differ). A transfer faster than MIN_TRANSFER_S is
counted as taking MIN_TRANSFER_S: a lower bound on a fast link's rate, which rises as the payloads it
allows grow, rather than a division by a time below what the clock and the stack resolve.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .codecs import make
from .config import CodecName

FAITHFUL: tuple[CodecName, ...] = ("none", "fp16", "int8")  # most faithful first; top-k comes after all of them
TOPK_BYTES_PER_VALUE = 6  # int32 index + fp16 value
MIN_TRANSFER_S = 0.001
SMOOTHING = 0.3  # weight of a new sample in the moving averages


@dataclass(frozen=True)
class Choice:
    codec: CodecName
    ratio: float  # topk: fraction of coordinates sent; 1.0 for the dense codecs
    nbytes: int  # payload bytes it sends (Codec.payload_bytes)


def choose(link_mbit: float | None, compute_s: float, numel: int, comm_budget: float, min_ratio: float) -> Choice:
    """The codec and ratio of one transfer (module docstring: formula, start choice, edge cases)."""
    if link_mbit is None or not link_mbit > 0 or not compute_s >= 0:  # `not >`: NaN falls here too
        return topk(numel, min_ratio)
    budget = comm_budget * compute_s * link_mbit * 1e6 / 8 if compute_s > 0 else 0.0  # inf * 0 is no budget
    for codec in FAITHFUL:
        size = make(codec).payload_bytes(numel)
        if size <= budget:
            return Choice(codec, 1.0, size)
    return topk(numel, max(min_ratio, math.floor(budget / TOPK_BYTES_PER_VALUE) / numel))


def topk(numel: int, ratio: float) -> Choice:
    return Choice("topk", ratio, make("topk", ratio=ratio).payload_bytes(numel))


class LinkMeter:
    """One worker's smoothed RTT (s) and link rate (Mbit/s) from its own exchanges with the PS; None until measured."""

    def __init__(self) -> None:
        self.rtt_s: float | None = None
        self.mbit: float | None = None

    def rtt(self, seconds: float) -> None:
        """An exchange without arrays: its round-trip time."""
        if math.isfinite(seconds) and seconds >= 0:
            self.rtt_s = seconds if self.rtt_s is None else (1 - SMOOTHING) * self.rtt_s + SMOOTHING * seconds

    def transfer(self, nbytes: int, seconds: float, held_s: float = 0.0) -> None:
        """`nbytes` crossed the link (request and reply) in `seconds` from send to reply, `held_s` of which the PS
        held the request (its handling, a sync round's wait). Needs an RTT first; skipped until then."""
        if self.rtt_s is None or nbytes <= 0 or not (math.isfinite(seconds) and math.isfinite(held_s)):
            return
        moving = max(MIN_TRANSFER_S, seconds - held_s - self.rtt_s)
        sample = nbytes * 8 / moving / 1e6
        self.mbit = sample if self.mbit is None else (1 - SMOOTHING) * self.mbit + SMOOTHING * sample
