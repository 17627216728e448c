"""The report's statistics over repeats, as pure functions: means with Student-t confidence intervals and
Welch's t-test, which gives each comparison against its baseline its verdict.

Why these: a cell has a handful of repeats (3 by default) with unknown, possibly unequal spread per cell
(a sync run under `satellite` varies more than an async one on `lan`). The t interval is exact for normal
data of unknown variance at any n >= 2; Welch's test does not assume equal variances. With n = 3 a
difference must be large against the spread to be called clear; "not separable" says that, not "equal".

The t distribution's CDF is the regularized incomplete beta function, computed by its continued fraction
(modified Lentz); quantiles invert the CDF by bisection. Accurate to about 1e-10, far below what three
repeats can tell; no SciPy (not a dependency of the image).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

CONFIDENCE = 0.95
ALPHA = 1 - CONFIDENCE  # a two-sided p below this is a clear difference
CLEAR, NOT_SEPARABLE = "clear difference", "not separable"


@dataclass(frozen=True)
class Interval:
    """Mean of n values with its two-sided CONFIDENCE interval; `half` None when n < 2 (no interval)."""

    mean: float
    half: float | None
    n: int

    def text(self, digits: int = 1) -> str:
        if self.half is None:
            return f"{self.mean:.{digits}f} (n={self.n})"
        return f"{self.mean:.{digits}f} ± {self.half:.{digits}f} (n={self.n})"


@dataclass(frozen=True)
class Verdict:
    """Welch's t-test of a against b: `text` is CLEAR or NOT_SEPARABLE; p None when it could not be run."""

    text: str
    p: float | None
    n_a: int
    n_b: int
    why: str = ""

    def describe(self) -> str:
        if self.p is None:
            return f"{self.text} ({self.why}; n = {self.n_a} vs {self.n_b})"
        return f"{self.text} (Welch's t, p = {self.p:.3f}, n = {self.n_a} vs {self.n_b})"


def mean_interval(values: list[float], confidence: float = CONFIDENCE) -> Interval | None:
    """Mean ± t_{(1+c)/2, n-1} * s / sqrt(n); None for no values."""
    n = len(values)
    if n == 0:
        return None
    mean = statistics.fmean(values)
    if n < 2:
        return Interval(mean, None, 1)
    half = t_quantile((1 + confidence) / 2, n - 1) * statistics.stdev(values) / math.sqrt(n)
    return Interval(mean, half, n)


def welch(a: list[float], b: list[float]) -> tuple[float, float, float]:
    """(t, Welch-Satterthwaite degrees of freedom, two-sided p) of mean(a) - mean(b). Needs n >= 2 on each
    side; two samples without any spread give p 1 when their means are equal and 0 when they differ."""
    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"Welch's t needs at least 2 values per sample, got {len(a)} and {len(b)}")
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    diff = statistics.fmean(a) - statistics.fmean(b)
    if va + vb == 0:
        return (0.0, math.inf, 1.0) if diff == 0 else (math.copysign(math.inf, diff), math.inf, 0.0)
    t = diff / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    return t, df, 2 * t_cdf(-abs(t), df)


def verdict(a: list[float], b: list[float], alpha: float = ALPHA) -> Verdict:
    """CLEAR when Welch's two-sided p < alpha, else NOT_SEPARABLE (also when a side has fewer than 2 values)."""
    if len(a) < 2 or len(b) < 2:
        return Verdict(NOT_SEPARABLE, None, len(a), len(b), "fewer than 2 values on a side")
    _, _, p = welch(a, b)
    return Verdict(CLEAR if p < alpha else NOT_SEPARABLE, p, len(a), len(b))


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with df > 0 degrees of freedom (df = inf: the normal distribution)."""
    if df <= 0:
        raise ValueError(f"degrees of freedom must be positive, got {df}")
    if math.isinf(t):
        return 1.0 if t > 0 else 0.0
    if math.isinf(df):
        return 0.5 * math.erfc(-t / math.sqrt(2))
    tail = 0.5 * incomplete_beta(df / 2, 0.5, df / (df + t * t))  # P(T > |t|)
    return 1 - tail if t > 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The t with P(T <= t) = p, 0 < p < 1, by bisection on t_cdf."""
    if not 0 < p < 1:
        raise ValueError(f"a quantile needs 0 < p < 1, got {p}")
    if p < 0.5:
        return -t_quantile(1 - p, df)
    low, high = 0.0, 1.0
    while t_cdf(high, df) < p:
        high *= 2
    for _ in range(200):
        mid = (low + high) / 2
        if t_cdf(mid, df) < p:
            low = mid
        else:
            high = mid
        if high - low < 1e-12 * max(1.0, high):
            break
    return (low + high) / 2


def incomplete_beta(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b), 0 <= x <= 1."""
    if not 0 <= x <= 1:
        raise ValueError(f"x must lie in [0, 1], got {x}")
    if x in (0.0, 1.0):
        return x
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1) / (a + b + 2):  # the continued fraction converges fast here; else use the symmetry
        return front * _beta_fraction(a, b, x) / a
    return 1 - front * _beta_fraction(b, a, 1 - x) / b


def _beta_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of I_x(a, b) (modified Lentz's method)."""
    tiny = 1e-300
    c, d = 1.0, 1 - (a + b) * x / (a + 1)
    d = 1 / (d if abs(d) > tiny else tiny)
    result = d
    for m in range(1, 1000):
        for numerator in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                          -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1 + numerator * d
            d = 1 / (d if abs(d) > tiny else tiny)
            c = 1 + numerator / c
            c = c if abs(c) > tiny else tiny
            result *= c * d
        if abs(c * d - 1) < 1e-15:
            break
    return result


def mean_band(curves: list[list[tuple[float, float]]], points: int = 100,
              confidence: float = CONFIDENCE) -> list[tuple[float, Interval]]:
    """The mean of several curves (each [(x, y)] with x ascending) on an even grid of `points` x values from
    the smallest first x to the largest last x, each with its interval: at every x only the curves that span
    it count (linear interpolation between their points), so a run that ended early (at its target) stops
    counting where it stopped; an x no curve spans is left out."""
    curves = [c for c in curves if c]
    if not curves:
        return []
    start, end = min(c[0][0] for c in curves), max(c[-1][0] for c in curves)
    grid = [start + (end - start) * i / max(1, points - 1) for i in range(points)] if end > start else [start]
    band = []
    for x in grid:
        ys = [y for y in (interpolate(c, x) for c in curves) if y is not None]
        if ys:
            band.append((x, mean_interval(ys, confidence)))
    return band


def interpolate(curve: list[tuple[float, float]], x: float) -> float | None:
    """y of the curve at x by linear interpolation; None outside [first x, last x]."""
    if not curve or x < curve[0][0] or x > curve[-1][0]:
        return None
    for (x0, y0), (x1, y1) in zip(curve, curve[1:]):
        if x0 <= x <= x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return curve[-1][1]
