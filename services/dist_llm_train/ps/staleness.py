"""Staleness of an update, whether the PS accepts it, and by how much its step is scaled.

Staleness s = version_now - base_version: the number of steps the PS applied since it sent the parameters the
update was computed from. Sync mode accepts s = 0 only (the barrier); bounded-async accepts s <= bound (one
bound for everyone); adaptive gives each worker its own bound from what the PS measured:

    bound_i = clamp(ceil(version_rate * (round_i + 4 * round_dev_i)), min_bound, max_bound)   [versions]

    version_rate versions the PS applied per second over the recent past                  [versions / s]
    round_i      EWMA of worker i's round: PS sent parameters -> PS received the update   [s]
                 (= RTT + transfer of both payloads at the link's rate + compute: the link as the PS
                 measures it, not as a preset or the worker claims it; sampled from the worker's first update)
    round_dev_i  EWMA of |sample - round_i|                                               [s]

Why: an update computed from version v arrives round_i seconds later, when the PS has applied about
version_rate * round_i further steps; that product is the staleness worker i cannot avoid, however healthy it is.
A single global bound therefore either rejects every update of a far or slow worker (a worker on a 600 ms RTT
link facing 20 versions/s arrives 12 versions late, every time) or, set high enough for it, lets a close worker's
update through long after that worker stalled. round_i + 4 * round_dev_i is TCP's retransmission timeout (RFC 6298): it covers the jitter
of the link and the compute, so a worker's normal updates pass and only an update held much longer than that
worker's usual (brownout, paused process) is refused. The version rate counts the worker's own steps too, which
makes the bound at most about one version larger than needed (its own steps do not land during its round): on the
accepting side, on purpose. min_bound holds while the rate is still unmeasured (0 at start); max_bound caps how old
a step may be whatever the measurements say.

Worked example: version_rate 20 versions/s, round 0.65 s (RTT 0.6 s + 50 ms compute), deviation 0.02 s:
ceil(20 * (0.65 + 0.08)) = ceil(14.6) = 15 versions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


def staleness(version_now: int, base_version: int) -> int:
    """s = version_now - base_version; ValueError for a base version the PS has not produced (negative or future)."""
    if not 0 <= base_version <= version_now:
        raise ValueError(f"update computed from version {base_version}, but the PS is at version {version_now}")
    return version_now - base_version


def accept(s: int, bound: int) -> bool:
    """Bounded staleness: accept when s <= bound (sync mode passes bound 0)."""
    return s <= bound


def lr_scale(s: int) -> float:
    """Staleness-aware async SGD (Zhang et al. 2016): the step of an update with staleness s is divided by s;
    s = 0 and s = 1 both keep the full step."""
    return 1.0 / max(1, s)


def adaptive_bound(version_rate: float, round_s: float, round_dev_s: float, min_bound: int, max_bound: int) -> int:
    """clamp(ceil(version_rate * (round_s + 4 * round_dev_s)), min_bound, max_bound); see the module docstring."""
    return min(max(math.ceil(version_rate * (round_s + 4 * round_dev_s)), min_bound), max_bound)


@dataclass(frozen=True)
class RoundEstimate:
    """EWMA of one worker's round time and of its deviation, with RFC 6298's gains (1/8 and 1/4).

    `update` returns a new estimate; the first sample sets round = sample and deviation = sample / 2.
    """

    round_s: float
    dev_s: float

    @staticmethod
    def first(sample_s: float) -> "RoundEstimate":
        return RoundEstimate(sample_s, sample_s / 2)

    def update(self, sample_s: float) -> "RoundEstimate":
        dev = 0.75 * self.dev_s + 0.25 * abs(sample_s - self.round_s)
        return RoundEstimate(0.875 * self.round_s + 0.125 * sample_s, dev)
