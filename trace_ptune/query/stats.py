"""The statistics behind ``trace-ptune query``: pure Python + ``math`` (no scipy on this path).

- Welch's two-sample t-test on summary statistics (n, mean, variance), two-sided, with a
  confidence interval of the difference of means; the t distribution's CDF comes from the
  regularized incomplete beta function (continued fraction, modified Lentz).
- The CUSUM change-point test: the maximum of the standardized cumulative sum of deviations from
  the mean follows, under "no change", the supremum of a Brownian bridge (Kolmogorov's
  distribution), which gives the p-value of the best split.
- Benjamini–Hochberg adjustment of a family of p-values (false discovery rate).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

_EPS = 1e-15
_TINY = 1e-300


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz's method)."""
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > _TINY else _TINY)
    h = d
    for m in range(1, 10_000):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > _TINY else _TINY)
        c = 1.0 + aa / c
        c = c if abs(c) > _TINY else _TINY
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > _TINY else _TINY)
        c = 1.0 + aa / c
        c = c if abs(c) > _TINY else _TINY
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < _EPS:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta function I_x(a, b) for a, b > 0 and 0 <= x <= 1."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    front = math.exp(log_front)
    # The continued fraction converges fast for x < (a + 1) / (a + b + 2); use symmetry otherwise.
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def normal_sf(z: float) -> float:
    """Upper tail of the standard normal distribution."""
    return 0.5 * math.erfc(z / math.sqrt(2.0))


def t_two_sided_p(t: float, df: float) -> float:
    """Two-sided p-value of a t statistic with ``df`` degrees of freedom."""
    if math.isnan(t):
        return 1.0
    if math.isinf(t):
        return 0.0
    if df > 1e7:  # the t distribution is the normal one for all practical purposes
        return 2.0 * normal_sf(abs(t))
    return betainc(df / 2.0, 0.5, df / (df + t * t))


def t_ppf(q: float, df: float) -> float:
    """Quantile of the t distribution (``q`` in (0.5, 1)), by bisection on the CDF."""
    if not 0.5 <= q < 1.0:
        raise ValueError(f"t_ppf needs 0.5 <= q < 1, got {q}")
    target = 2.0 * (1.0 - q)  # two-sided tail mass beyond the quantile
    lo, hi = 0.0, 1.0
    while t_two_sided_p(hi, df) > target:
        hi *= 2.0
        if hi > 1e12:
            return math.inf
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if t_two_sided_p(mid, df) > target:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12 * max(1.0, hi):
            break
    return 0.5 * (lo + hi)


@dataclass(frozen=True)
class Difference:
    """A two-sample comparison: ``delta`` = mean_after - mean_before."""

    delta: float
    ci_low: float
    ci_high: float
    p_value: float
    statistic: float
    df: float


def welch(
    n1: int,
    mean1: float,
    var1: float,
    n2: int,
    mean2: float,
    var2: float,
    *,
    alpha: float = 0.01,
    interval: bool = True,
) -> Difference:
    """Welch's unequal-variance t-test of mean2 - mean1 from summary statistics.

    ``var1``/``var2`` are sample variances (ddof=1). The interval is the two-sided 1 - alpha
    confidence interval of the difference (NaN when ``interval`` is false: it costs a quantile).
    """
    if n1 < 2 or n2 < 2:
        raise ValueError("Welch's test needs at least two observations on each side")
    delta = mean2 - mean1
    a, b = max(var1, 0.0) / n1, max(var2, 0.0) / n2
    se2 = a + b
    if se2 <= 0.0:  # both sides constant
        p = 1.0 if delta == 0 else 0.0
        stat = 0.0 if delta == 0 else math.copysign(math.inf, delta)
        return Difference(delta, delta, delta, p, stat, float(n1 + n2 - 2))
    se = math.sqrt(se2)
    df = se2 * se2 / ((a * a / (n1 - 1) if a else 0.0) + (b * b / (n2 - 1) if b else 0.0))
    stat = delta / se
    half = t_ppf(1.0 - alpha / 2.0, df) * se if interval else math.nan
    return Difference(delta, delta - half, delta + half, t_two_sided_p(stat, df), stat, df)


def kolmogorov_sf(x: float) -> float:
    """P(sup |B(t)| > x) for a Brownian bridge B: the CUSUM test's null distribution."""
    if x <= 0.0:
        return 1.0
    if x < 0.3:  # the alternating series converges slowly here, and the answer is ~1
        return 1.0
    total = 0.0
    for k in range(1, 101):
        term = math.exp(-2.0 * k * k * x * x)
        total += term if k % 2 else -term
        if term < 1e-18:
            break
    return min(1.0, max(0.0, 2.0 * total))


def cusum_p_value(max_abs_cusum: float, sigma: float, n: int) -> float:
    """p-value of ``max_k |sum_{i<=k}(x_i - mean)|`` under "no change in mean"."""
    if n < 2:
        return 1.0
    if sigma <= 0.0:
        return 1.0 if max_abs_cusum <= 0.0 else 0.0
    return kolmogorov_sf(max_abs_cusum / (sigma * math.sqrt(n)))


def bh_adjust(p_values: Sequence[float]) -> list[float]:
    """Benjamini–Hochberg adjusted p-values (step-up), in the input order."""
    m = len(p_values)
    if m == 0:
        return []
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted = [0.0] * m
    running = 1.0
    for rank in range(m, 0, -1):
        i = order[rank - 1]
        running = min(running, p_values[i] * m / rank)
        adjusted[i] = min(1.0, running)
    return adjusted
