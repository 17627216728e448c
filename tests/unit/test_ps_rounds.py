"""ps/rounds.py: the sync barrier, the async window, the version rate and the adaptive bounds, played by hand
with explicit times (no sockets, no sleeps)."""

import math

import pytest

from dist_llm_train.ps.rounds import AdaptiveBounds, SyncBarrier, VersionRate, Window


def barrier(timeout_s=10.0, min_n=1, expected=("a", "b", "c")):
    b = SyncBarrier(timeout_s, min_n)
    b.open(5)
    for s in expected:
        b.expect(s)
    return b


def test_round_closes_when_every_expected_worker_arrived():
    b = barrier()
    assert b.arrive("a", 1, now=0.0) and b.arrive("b", 2, now=1.0)
    assert not b.due(now=2.0)
    assert b.arrive("c", 3, now=2.0)
    assert b.due(now=2.0)
    assert b.close() == ([("a", 1), ("b", 2), ("c", 3)], set())


def test_stragglers_are_dropped_timeout_after_the_first_arrival():
    b = barrier(timeout_s=10.0)
    b.arrive("b", 2, now=100.0)
    b.arrive("a", 1, now=103.0)
    assert b.deadline() == 110.0
    assert not b.due(now=109.9)
    assert b.due(now=110.0)
    assert b.close() == ([("b", 2), ("a", 1)], {"c"})


def test_no_timeout_before_the_first_arrival():
    b = barrier(timeout_s=1.0)
    assert b.deadline() is None and not b.due(now=1e9)


def test_a_round_below_the_rules_minimum_waits_past_its_deadline():
    b = barrier(timeout_s=1.0, min_n=3, expected=("a", "b", "c", "d"))
    b.arrive("a", 1, now=0.0)
    b.arrive("b", 2, now=0.0)
    assert not b.due(now=50.0)  # two of four after the timeout: krum with f = 0 needs three
    b.arrive("e", 5, now=51.0)  # a worker that joined late counts
    assert b.due(now=51.0)
    assert b.close() == ([("a", 1), ("b", 2), ("e", 5)], {"c", "d"})


def test_all_expected_arrived_but_too_few_still_waits():
    b = barrier(min_n=3, expected=("a", "b"))
    b.arrive("a", 1, now=0.0)
    b.arrive("b", 2, now=0.0)
    assert not b.due(now=0.0)


def test_a_second_update_from_the_same_session_is_refused():
    b = barrier()
    assert b.arrive("a", 1, now=0.0)
    assert not b.arrive("a", 9, now=0.5)
    assert b.arrived == {"a": 1}


def test_a_session_that_left_is_no_longer_waited_for():
    b = barrier(expected=("a", "b"))
    b.arrive("a", 1, now=0.0)
    b.forget("b")
    assert b.due(now=0.0)


def test_open_starts_an_empty_round():
    b = barrier()
    b.arrive("a", 1, now=0.0)
    b.open(6)
    assert (b.version, b.expected, b.arrived, b.deadline()) == (6, set(), {}, None)


def test_window_hands_out_full_windows_in_order():
    w = Window(3)
    assert [w.add(i) for i in range(7)] == [None, None, [0, 1, 2], None, None, [3, 4, 5], None]
    assert w.items == [6]


def test_window_of_one_steps_on_every_update():
    w = Window(1)
    assert w.add("x") == ["x"] and w.add("y") == ["y"]


def test_version_rate_over_the_horizon():
    rate = VersionRate(horizon_s=10.0)
    assert rate.rate() == 0.0
    rate.record(0.0, 1)
    assert rate.rate() == 0.0
    rate.record(2.0, 11)
    assert rate.rate() == 5.0
    rate.record(20.0, 12)  # the old samples fell out of the horizon: a single sample again
    assert rate.rate() == 0.0
    rate.record(21.0, 14)
    assert rate.rate() == 2.0


def test_adaptive_bound_before_any_measurement_is_the_minimum():
    bounds = AdaptiveBounds(min_bound=2, max_bound=32)
    assert bounds.judge("w", None, rate=20.0) == (2, True)


def test_adaptive_bound_from_the_first_round_then_judged_by_the_past():
    bounds = AdaptiveBounds(min_bound=1, max_bound=32)
    # first round 0.5 s: estimate 0.5 s, deviation 0.25 s -> ceil(20 * (0.5 + 4 * 0.25)) = 30
    assert bounds.judge("w", 0.5, rate=20.0) == (30, True)
    # a 3 s round (a brownout) is judged by the estimate before it: same bound, not raised by itself
    assert bounds.judge("w", 3.0, rate=20.0) == (30, False)
    # it is folded in afterwards: round 0.8125 s, deviation 0.8125 s -> capped at 32
    est = bounds.estimates["w"]
    assert (est.round_s, est.dev_s) == (0.8125, 0.8125)
    assert bounds.judge("w", None, rate=20.0) == (32, True)


def test_adaptive_bounds_differ_per_worker_with_their_rounds():
    bounds = AdaptiveBounds(min_bound=1, max_bound=100)
    near, _ = bounds.judge("near", 0.25, rate=20.0)  # ceil(20 * (0.25 + 0.5)) = 15
    far, _ = bounds.judge("far", 0.65, rate=20.0)  # ceil(20 * (0.65 + 1.3)) = 39
    assert (near, far) == (15, 39)


def test_adaptive_bound_is_the_minimum_while_the_rate_is_unknown():
    bounds = AdaptiveBounds(min_bound=1, max_bound=32)
    assert bounds.judge("w", 0.5, rate=0.0) == (1, True)


def test_forget_drops_a_sessions_estimate():
    bounds = AdaptiveBounds(min_bound=1, max_bound=32)
    bounds.judge("w", 0.5, rate=20.0)
    bounds.forget("w")
    assert "w" not in bounds.estimates and "w" not in bounds.bounds
    assert bounds.judge("w", None, rate=20.0) == (1, True)


@pytest.mark.parametrize("rate", [0.5, 7.0, 100.0])
def test_adaptive_bound_matches_the_formula(rate):
    bounds = AdaptiveBounds(min_bound=0, max_bound=10**6)
    bound, _ = bounds.judge("w", 0.2, rate=rate)
    assert bound == math.ceil(rate * (0.2 + 4 * 0.1))
