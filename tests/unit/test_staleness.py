"""Staleness, bounded acceptance, the adaptive per-worker bound and the step scaling, on hand-computed numbers."""

import pytest

from dist_llm_train.ps.staleness import (
    RoundEstimate,
    accept,
    adaptive_bound,
    lr_scale,
    staleness,
)


@pytest.mark.parametrize(("now", "base", "s"), [(0, 0, 0), (10, 10, 0), (10, 7, 3), (10, 0, 10)])
def test_staleness_is_versions_applied_since_the_base(now, base, s):
    assert staleness(now, base) == s


@pytest.mark.parametrize(("now", "base"), [(10, 11), (10, -1)])
def test_staleness_refuses_versions_the_ps_never_produced(now, base):
    with pytest.raises(ValueError, match=f"version {base}, but the PS is at version {now}"):
        staleness(now, base)


@pytest.mark.parametrize(
    ("s", "bound", "accepted"),
    [
        (0, 0, True),  # sync: only the current version
        (1, 0, False),
        (3, 4, True),  # async, bound 4
        (4, 4, True),
        (5, 4, False),
        (40, 32, False),
    ],
)
def test_accept_table(s, bound, accepted):
    assert accept(s, bound) is accepted


@pytest.mark.parametrize(("s", "scale"), [(0, 1.0), (1, 1.0), (2, 0.5), (4, 0.25), (10, 0.1)])
def test_lr_scale_divides_by_staleness(s, scale):
    assert lr_scale(s) == scale


@pytest.mark.parametrize(
    ("rate", "round_s", "dev_s", "bound"),
    [
        (20.0, 0.65, 0.02, 15),  # ceil(20 * (0.65 + 0.08)) = ceil(14.6): the docstring's example
        (20.0, 0.05, 0.0, 1),  # a near worker: ceil(1.0)
        (2.0, 1.0, 0.25, 4),  # ceil(2 * 2.0) = 4 exactly: no rounding up past an integer
        (10.0, 0.1, 0.0, 1),  # ceil(1.0) = 1
        (0.0, 5.0, 1.0, 1),  # rate not measured yet: min_bound
        (0.5, 0.2, 0.0, 1),  # ceil(0.1) = 1 = min_bound
        (100.0, 3.0, 1.0, 32),  # ceil(700) capped at max_bound
    ],
)
def test_adaptive_bound_on_hand_computed_inputs(rate, round_s, dev_s, bound):
    assert adaptive_bound(rate, round_s, dev_s, min_bound=1, max_bound=32) == bound


def test_adaptive_bound_accepts_a_far_worker_that_a_global_bound_starves():
    # 8 versions/s; a worker 1.5 s away arrives ceil(8 * 1.5) = 12 versions late every round.
    s = 12
    assert not accept(s, bound=4)
    assert accept(s, adaptive_bound(8.0, 1.5, 0.05, min_bound=1, max_bound=32))  # ceil(8 * 1.7) = 14
    assert not accept(3 * s, adaptive_bound(8.0, 1.5, 0.05, min_bound=1, max_bound=32))  # held 3x longer


def test_round_estimate_follows_rfc6298():
    first = RoundEstimate.first(1.0)
    assert (first.round_s, first.dev_s) == (1.0, 0.5)
    second = first.update(2.0)  # dev = 0.75 * 0.5 + 0.25 * |2 - 1|; round = 0.875 * 1 + 0.125 * 2
    assert (second.round_s, second.dev_s) == (1.125, 0.625)
    steady = first
    for _ in range(100):
        steady = steady.update(1.0)
    assert steady.round_s == pytest.approx(1.0) and steady.dev_s < 1e-9
