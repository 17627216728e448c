"""How late the userspace delayers release packets over a whole run, and whether that is within tolerance.

Each delayer keeps, since it started, a histogram of its timer lateness (actual release - the release its
model scheduled: the emulator's own error, not the in-order skew its jitter model adds by design) in fixed
buckets (`EDGES_MS`, 10 % apart: a percentile read from it is the upper edge of its bucket, at most 10 %
above the true value, never below), and an exact count of the releases later than the tolerance of its
link's delay in force (`tolerance_ms`). The sidecar adds those of every delayer it ran (`Tally`: restarts
included) and judges each container:

    within tolerance  <=>  at most 1 % of releases later than max(10 % of the link's delay, 2 ms)
                           (p99 lateness within it)  and  no unasked-for drop

(the RTT tolerance of netem/README.md, applied to one direction). "More than 1 %" is a one-sided
binomial test at the 1 % level, not the raw share: a short run's few hundred packets cannot tell 1.9 %
from 1 % (5 late of 267 happen with a probability of 0.13 when 1 % are late), while over a run's tens
of thousands of packets the test and the share agree to a few hundredths of a percent. Unasked-for drops are packets the kernel
or the delayer lost that the preset's loss did not ask for: NFQUEUE overflow, the delayer's socket buffer,
refused verdicts. A rate limiter's queue overflowing is not one: a real access link drops there too.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field

from ..experiments.stats import incomplete_beta

# Upper edges of the buckets, ms: 0.05 ms x 1.1^k up to 10 s, then everything later.
EDGES_MS: tuple[float, ...] = tuple(0.05 * 1.1 ** k for k in range(130)) + (math.inf,)
TOLERANCE_FRACTION, TOLERANCE_FLOOR_MS = 0.10, 2.0  # max(10 % of the delay, 2 ms); the probe's RTT tolerance too
ALLOWED_LATE_SHARE = 0.01  # the 1 % a p99 leaves out
SIGNIFICANCE = 0.01  # judged late only when at most this likely with ALLOWED_LATE_SHARE late
UNASKED_DROPS = ("overflow_drops", "socket_drops", "refused_verdicts")


def bucket(late_ms: float) -> int:
    """Index of the bucket a lateness falls in (negative lateness, a release on time, counts as 0)."""
    return bisect.bisect_left(EDGES_MS, max(0.0, late_ms))


def percentile_ms(counts: list[int], q: float) -> float | None:
    """Upper edge of the bucket holding the q-quantile (0 < q <= 1); None with no sample."""
    total = sum(counts)
    if total == 0:
        return None
    rank = math.ceil(q * total)
    seen = 0
    for edge, count in zip(EDGES_MS, counts):
        seen += count
        if seen >= rank:
            return edge
    return EDGES_MS[-1]


def binomial_tail(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p): the regularized incomplete beta I_p(k, n - k + 1)."""
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    return incomplete_beta(k, n - k + 1, p)


def too_many_late(over: int, packets: int) -> bool:
    """Whether `over` late releases of `packets` show more than ALLOWED_LATE_SHARE late (binomial, one-sided)."""
    return over > ALLOWED_LATE_SHARE * packets and binomial_tail(over, packets, ALLOWED_LATE_SHARE) < SIGNIFICANCE


def tolerance_ms(delay_ms: float) -> float:
    return max(TOLERANCE_FRACTION * delay_ms, TOLERANCE_FLOOR_MS)


def unasked_drops(stats: dict) -> int:
    return sum(int(stats.get(key) or 0) for key in UNASKED_DROPS)


@dataclass
class Tally:
    """Per container, the latest cumulative histogram and drop count of each delayer process it had."""

    # (container label, delayer pid) -> (histogram, releases over tolerance, unasked-for drops), its latest
    by_process: dict[tuple[str, int], tuple[list[int], int, int]] = field(default_factory=dict)

    def record(self, label: str, stats: dict) -> None:
        """Note a delayer's stats (`late_hist_counts`, `late_over_tolerance`, drop counters: since it started)."""
        counts = stats.get("late_hist_counts")
        if not counts or len(counts) != len(EDGES_MS) or stats.get("pid") is None:
            return
        self.by_process[(label, int(stats["pid"]))] = (list(counts), int(stats.get("late_over_tolerance") or 0),
                                                       unasked_drops(stats))

    def summary(self) -> dict | None:
        """{late_p99_ms, packets, late_over_tolerance, drops, within_tolerance, problems, containers: {label:
        the same}}; None when no delayer ran (nothing emulated in userspace)."""
        if not self.by_process:
            return None
        per: dict[str, tuple[list[int], int, int]] = {}
        for (label, _), (counts, over, drops) in self.by_process.items():
            total, over0, drops0 = per.get(label, ([0] * len(EDGES_MS), 0, 0))
            per[label] = ([a + b for a, b in zip(total, counts)], over0 + over, drops0 + drops)
        containers, problems = {}, []
        for label, (counts, over, drops) in sorted(per.items()):
            packets = sum(counts)
            late = too_many_late(over, packets)
            containers[label] = {"late_p99_ms": percentile_ms(counts, 0.99), "packets": packets,
                                 "late_over_tolerance": over, "drops": drops, "within_tolerance": not late and not drops}
            if late:
                problems.append(f"{label}: {100 * over / packets:.1f} % of {packets} packets released later than the "
                                f"tolerance (p99 {containers[label]['late_p99_ms']:g} ms; at most 1 % may be, binomial test at 1 %)")
            if drops:
                problems.append(f"{label}: {drops} packets dropped that the preset did not ask for (NFQUEUE)")
        everything = [sum(c) for c in zip(*(counts for counts, _, _ in per.values()))]
        return {"late_p99_ms": percentile_ms(everything, 0.99), "packets": sum(everything),
                "late_over_tolerance": sum(o for _, o, _ in per.values()), "drops": sum(d for _, _, d in per.values()),
                "within_tolerance": not problems, "problems": problems, "containers": containers}
