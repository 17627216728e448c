"""experiments/stats.py: t quantiles against closed forms and table values, intervals and Welch's test by hand."""

import math

import pytest

from dist_llm_train.experiments.stats import (CLEAR, NOT_SEPARABLE, incomplete_beta, interpolate, mean_band,
                                              mean_interval, t_cdf,
                                              t_quantile, verdict, welch)


@pytest.mark.parametrize("t", [-30.0, -2.5, -0.3, 0.0, 0.7, 4.0, 100.0])
def test_t_cdf_matches_the_closed_forms_of_one_and_two_degrees_of_freedom(t):
    assert t_cdf(t, 1) == pytest.approx(0.5 + math.atan(t) / math.pi, abs=1e-12)  # Cauchy
    assert t_cdf(t, 2) == pytest.approx(0.5 + t / (2 * math.sqrt(2 + t * t)), abs=1e-12)


@pytest.mark.parametrize("df, q975", [(1, 12.7062), (2, 4.3027), (3, 3.1824), (4, 2.7764), (10, 2.2281),
                                      (30, 2.0423), (1000, 1.9623)])
def test_t_quantiles_match_the_printed_table(df, q975):
    assert t_quantile(0.975, df) == pytest.approx(q975, abs=1e-4)
    assert t_quantile(0.025, df) == pytest.approx(-q975, abs=1e-4)


def test_infinite_degrees_of_freedom_is_the_normal_distribution():
    assert t_cdf(1.959964, math.inf) == pytest.approx(0.975, abs=1e-6)


def test_incomplete_beta_of_one_and_one_is_x():
    for x in (0.0, 0.1, 0.5, 0.93, 1.0):
        assert incomplete_beta(1, 1, x) == pytest.approx(x, abs=1e-12)


@pytest.mark.parametrize("call", [lambda: t_quantile(0, 3), lambda: t_quantile(1, 3), lambda: t_cdf(1, 0),
                                  lambda: incomplete_beta(1, 1, 1.5), lambda: welch([1.0], [1.0, 2.0])])
def test_bad_arguments_are_refused(call):
    with pytest.raises(ValueError):
        call()


def test_interval_of_three_values_by_hand():
    # mean 2, sd 1, n 3: half-width = t_{0.975, 2} * 1 / sqrt(3) = 4.3027 / 1.7321 = 2.4841
    interval = mean_interval([1.0, 2.0, 3.0])
    assert (interval.mean, interval.n) == (2.0, 3) and interval.half == pytest.approx(2.4841, abs=1e-4)
    assert interval.text(2) == "2.00 ± 2.48 (n=3)"


def test_one_value_has_no_interval_and_none_has_no_mean():
    assert mean_interval([4.0]).half is None and mean_interval([4.0]).text() == "4.0 (n=1)"
    assert mean_interval([]) is None


def test_welch_by_hand():
    # means 3 and 6, variances 2.5 and 10, n 5 each: se = sqrt(0.5 + 2) = 1.5811, t = -1.8974,
    # df = 2.5^2 / (0.5^2 / 4 + 2^2 / 4) = 5.882
    t, df, p = welch([1.0, 2, 3, 4, 5], [2.0, 4, 6, 8, 10])
    assert t == pytest.approx(-1.8974, abs=1e-4) and df == pytest.approx(5.882, abs=1e-3)
    assert p == pytest.approx(2 * t_cdf(-1.8974, 5.882), abs=1e-4) and 0.1 < p < 0.12


def test_verdicts():
    far = verdict([10.0, 11, 12], [30.0, 31, 32])
    assert far.text == CLEAR and far.p < 0.001 and "Welch's t" in far.describe() and "n = 3 vs 3" in far.describe()
    assert verdict([10.0, 20, 30], [12.0, 22, 29]).text == NOT_SEPARABLE
    short = verdict([10.0], [30.0, 31, 32])
    assert short.text == NOT_SEPARABLE and short.p is None and "fewer than 2" in short.describe()


def test_samples_without_spread():
    assert welch([2.0, 2.0], [2.0, 2.0])[2] == 1.0
    assert welch([2.0, 2.0], [3.0, 3.0])[2] == 0.0


def test_mean_band_of_two_lines_by_hand():
    # y = x on [0, 2] and y = 2 + x on [0, 1]: at x = 0.5 both count (mean 1.5), at x = 2 only the first
    band = dict(mean_band([[(0.0, 0.0), (2.0, 2.0)], [(0.0, 2.0), (1.0, 3.0)]], points=5))
    assert list(band) == [0.0, 0.5, 1.0, 1.5, 2.0]
    assert (band[0.5].mean, band[0.5].n) == (1.5, 2) and band[0.5].half == pytest.approx(12.7062 * 1 / 1, abs=1e-3)
    assert (band[2.0].mean, band[2.0].n, band[2.0].half) == (2.0, 1, None)


def test_interpolate_inside_and_outside():
    curve = [(1.0, 10.0), (3.0, 30.0)]
    assert interpolate(curve, 2.0) == 20.0 and interpolate(curve, 0.5) is None and interpolate(curve, 3.5) is None
    assert mean_band([]) == []
