"""Paired statistics for baseline-vs-candidate comparisons (numpy; scipy for distributions).

All tests are two-sided and take the per-example differences ``d = candidate - baseline``.
scipy is imported on first use (it ships with the ``[train]`` extra); importing this module
needs numpy only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from trace_ptune.errors import ConfigError

WORST_FRACTION = 0.1


def worst_decile_mean(values: Sequence[float] | np.ndarray, fraction: float = WORST_FRACTION) -> float:
    """Mean of the worst ``fraction`` of scores: the lowest ``ceil(fraction * n)`` (at least one)."""
    arr = np.asarray(values, dtype=float)
    if arr.size == 0:
        return math.nan
    k = max(1, math.ceil(fraction * arr.size - 1e-9))
    return float(np.sort(arr)[:k].mean())


@dataclass(frozen=True)
class TestResult:
    """One paired test: its p-value and, when it has one, a confidence interval for the mean diff."""

    test: str
    p_value: float
    ci_low: float | None = None
    ci_high: float | None = None
    statistic: float | None = None


def _scipy_stats():  # type: ignore[no-untyped-def]
    try:
        from scipy import stats
    except ImportError:  # pragma: no cover - scipy is a declared dependency of the [train] extra
        raise ConfigError(
            "statistical tests need scipy; install it with `pip install trace-ptune[train]`."
        ) from None
    return stats


def paired_t(diffs: Sequence[float] | np.ndarray, alpha: float = 0.05) -> TestResult:
    """Paired t-test on the differences, with the ``1 - alpha`` t interval of their mean."""
    d = np.asarray(diffs, dtype=float)
    n = d.size
    mean = float(d.mean()) if n else math.nan
    if n < 2:
        return TestResult("paired_t", 1.0, mean, mean)
    sd = float(d.std(ddof=1))
    if sd <= 1e-12 * max(1.0, abs(mean)):  # every pair moved by the same amount: no noise to test
        mean = float(np.round(mean, 12))
        return TestResult("paired_t", 1.0 if mean == 0.0 else 0.0, mean, mean)
    se = sd / math.sqrt(n)
    stats = _scipy_stats()
    t = mean / se
    p = float(2 * stats.t.sf(abs(t), n - 1))
    half = float(stats.t.ppf(1 - alpha / 2, n - 1)) * se
    return TestResult("paired_t", p, mean - half, mean + half, t)


def paired_bootstrap(
    diffs: Sequence[float] | np.ndarray, alpha: float = 0.05, *, n_resamples: int = 10_000, seed: int = 0
) -> TestResult:
    """Percentile bootstrap interval of the mean difference; p from the null-centred resamples."""
    d = np.asarray(diffs, dtype=float)
    n = d.size
    mean = float(d.mean()) if n else math.nan
    if n < 2 or float(d.std()) <= 1e-12 * max(1.0, abs(mean)):
        mean = float(np.round(mean, 12))
        return TestResult("bootstrap", 1.0 if n < 2 or mean == 0.0 else 0.0, mean, mean)
    rng = np.random.default_rng(seed)
    means = np.empty(n_resamples)
    step = max(1, 2_000_000 // n)  # bound the (resamples x n) index block to ~16 MB
    for lo in range(0, n_resamples, step):
        hi = min(n_resamples, lo + step)
        means[lo:hi] = d[rng.integers(0, n, size=(hi - lo, n))].mean(axis=1)
    low, high = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    extreme = int(np.count_nonzero(np.abs(means - mean) >= abs(mean)))
    p = (extreme + 1) / (n_resamples + 1)
    return TestResult("bootstrap", float(p), float(low), float(high))


def wilcoxon(diffs: Sequence[float] | np.ndarray) -> TestResult:
    """Wilcoxon signed-rank test (zero differences dropped; p = 1 when every pair ties)."""
    d = np.asarray(diffs, dtype=float)
    nz = d[d != 0]
    if nz.size == 0:
        return TestResult("wilcoxon", 1.0)
    res = _scipy_stats().wilcoxon(nz, zero_method="wilcox", alternative="two-sided")
    return TestResult("wilcoxon", float(res.pvalue), statistic=float(res.statistic))


def sign_test(diffs: Sequence[float] | np.ndarray) -> TestResult:
    """Exact two-sided sign test on wins vs losses (ties dropped); McNemar's test for 0/1 scores."""
    d = np.asarray(diffs, dtype=float)
    wins, losses = int((d > 0).sum()), int((d < 0).sum())
    n = wins + losses
    if n == 0:
        return TestResult("sign", 1.0, statistic=0.0)
    k = min(wins, losses)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return TestResult("sign", min(1.0, 2 * tail), statistic=float(wins))


def worst_decile_bootstrap(
    baseline: np.ndarray,
    candidate: np.ndarray,
    alpha: float = 0.05,
    *,
    n_resamples: int = 2_000,
    seed: int = 0,
) -> tuple[float, float]:
    """Paired-bootstrap interval of ``worst_decile(candidate) - worst_decile(baseline)``."""
    n = baseline.size
    if n < 2:
        delta = worst_decile_mean(candidate) - worst_decile_mean(baseline)
        return delta, delta
    k = max(1, math.ceil(WORST_FRACTION * n - 1e-9))
    rng = np.random.default_rng(seed + 1)
    deltas = np.empty(n_resamples)
    step = max(1, 1_000_000 // n)
    for lo in range(0, n_resamples, step):
        hi = min(n_resamples, lo + step)
        idx = rng.integers(0, n, size=(hi - lo, n))
        b = np.partition(baseline[idx], k - 1, axis=1)[:, :k].mean(axis=1)
        c = np.partition(candidate[idx], k - 1, axis=1)[:, :k].mean(axis=1)
        deltas[lo:hi] = c - b
    low, high = np.quantile(deltas, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


TESTS = ("t", "bootstrap", "wilcoxon", "sign")
