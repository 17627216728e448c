"""The delayers' release lateness over a run: buckets, percentiles read from them, the tally over
restarts and containers, and the tolerance (netem/lateness.py)."""

from __future__ import annotations

import math

import pytest

from dist_llm_train.netem import lateness
from dist_llm_train.netem.lateness import EDGES_MS, Tally, bucket, percentile_ms


def counts_of(*late_ms: float) -> list[int]:
    counts = [0] * len(EDGES_MS)
    for ms in late_ms:
        counts[bucket(ms)] += 1
    return counts


def stats(pid: int, *late_ms: float, tolerance_ms: float = 2.0, **drops) -> dict:
    """A delayer's stats after releasing packets this late (the over-tolerance count as the delayer keeps it)."""
    return {"pid": pid, "late_hist_counts": counts_of(*late_ms),
            "late_over_tolerance": sum(ms > tolerance_ms for ms in late_ms), **drops}


def test_buckets_are_10_percent_apart_and_end_with_everything_later():
    assert EDGES_MS[0] == 0.05 and EDGES_MS[-1] == math.inf and EDGES_MS[-2] > 10_000
    assert all(b / a == pytest.approx(1.1, rel=1e-3) for a, b in zip(EDGES_MS[:-2], EDGES_MS[1:-1]))


# 0.05 x 1.1^k: k = 0 -> 0.05; 1 -> 0.055; 39 -> 2.0572 (the first edge >= 2); 43 -> 3.0120
@pytest.mark.parametrize("late_ms, edge", [(-0.3, 0.05), (0.0, 0.05), (0.05, 0.05), (0.051, 0.055),
                                           (2.0, 2.0572), (3.0, 3.0120), (1e6, math.inf)])
def test_a_lateness_falls_in_the_bucket_whose_upper_edge_is_at_or_above_it(late_ms, edge):
    assert EDGES_MS[bucket(late_ms)] == pytest.approx(edge, rel=1e-3)


def test_percentile_is_the_upper_edge_of_the_bucket_holding_it():
    counts = counts_of(*([0.1] * 98 + [3.0, 40.0]))  # 100 packets: the 99th is 3 ms
    assert percentile_ms(counts, 0.99) == pytest.approx(3.0120, rel=1e-3)
    assert 40.0 <= percentile_ms(counts, 1.0) <= 44.0
    assert 0.1 <= percentile_ms(counts, 0.5) <= 0.11
    assert percentile_ms([0] * len(EDGES_MS), 0.99) is None


def test_tolerance_is_ten_percent_of_the_delay_with_a_2_ms_floor():
    assert lateness.tolerance_ms(0) == 2.0 and lateness.tolerance_ms(50) == 5.0 and lateness.tolerance_ms(595) == 59.5


def test_tally_adds_restarted_delayers_and_judges_each_container():
    tally = Tally()
    assert tally.summary() is None  # no delayer ran: nothing to judge
    tally.record("worker-0", stats(11, *([0.2] * 99 + [9.0]), tolerance_ms=5.0))
    tally.record("worker-0", stats(11, *([0.2] * 199 + [9.0]), tolerance_ms=5.0))  # same process later: replaces
    tally.record("worker-0", stats(12, *([0.3] * 100), tolerance_ms=5.0))  # restarted delayer: adds
    tally.record("worker-1", stats(13, *([0.2] * 90 + [4.0] * 10), overflow_drops=3, socket_drops=1))
    summary = tally.summary()
    w0, w1 = summary["containers"]["worker-0"], summary["containers"]["worker-1"]
    assert (w0["packets"], w0["late_over_tolerance"], w0["within_tolerance"]) == (300, 1, True)  # 0.3 %: within
    assert (w1["packets"], w1["late_over_tolerance"], w1["drops"], w1["within_tolerance"]) == (100, 10, 4, False)
    assert 4.0 <= w1["late_p99_ms"] <= 4.4
    assert (summary["packets"], summary["late_over_tolerance"], summary["drops"]) == (400, 11, 4)
    assert not summary["within_tolerance"]
    assert summary["problems"] == [
        f"worker-1: 10.0 % of 100 packets released later than the tolerance (p99 {w1['late_p99_ms']:g} ms; "
        "at most 1 % may be, binomial test at 1 %)",
        "worker-1: 4 packets dropped that the preset did not ask for (NFQUEUE)"]


def test_exactly_one_percent_late_is_within_and_a_drop_is_not():
    tally = Tally()
    tally.record("ps", stats(1, *([0.1] * 99 + [50.0])))
    assert tally.summary()["within_tolerance"]
    tally.record("ps", stats(1, *([0.1] * 99 + [50.0]), refused_verdicts=1))
    assert tally.summary()["problems"] == ["ps: 1 packets dropped that the preset did not ask for (NFQUEUE)"]


def test_binomial_tail_matches_the_sum_of_its_terms():
    def pmf(j, n, p):
        return math.comb(n, j) * p ** j * (1 - p) ** (n - j)

    def direct(k, n, p):  # above the mean the tail itself, below it one minus the rest (no cancellation either way)
        return sum(pmf(j, n, p) for j in range(k, n + 1)) if k > n * p else 1 - sum(pmf(j, n, p) for j in range(k))

    for k, n, p in ((0, 10, 0.3), (1, 10, 0.3), (5, 267, 0.01), (3, 3, 0.5), (40, 1000, 0.01), (11, 10, 0.5),
                    (2, 189_104, 0.01)):  # far below the mean: the first terms underflow
        assert lateness.binomial_tail(k, n, p) == pytest.approx(direct(k, n, p), rel=1e-9, abs=1e-300)


def test_late_means_more_than_one_percent_beyond_chance():
    # 5 of 267 (1.9 %) happen 13 % of the time when 1 % are late: not shown; 10 of 267 are (p = 0.001).
    assert not lateness.too_many_late(5, 267) and lateness.too_many_late(10, 267)
    # Over a long run the test and the share agree closely: 1.3 % of 50,000 is late, 1.05 % is not shown.
    assert lateness.too_many_late(650, 50_000) and not lateness.too_many_late(525, 50_000)
    assert not lateness.too_many_late(1, 100)  # exactly 1 %: within, whatever the count
    assert not lateness.too_many_late(0, 0)


def test_stats_without_a_histogram_are_ignored():
    tally = Tally()
    tally.record("ps", {"pid": 3})
    tally.record("ps", {"pid": 3, "late_hist_counts": [1, 2]})  # another build's buckets: not comparable
    assert tally.summary() is None
