"""The statistics of the query layer against reference values (computed once with SciPy)."""

from __future__ import annotations

import math
import random

import pytest

from trace_ptune.query import stats


@pytest.mark.parametrize(
    ("t", "df", "expected"),
    [
        (0.5, 3, 0.651447964848151),
        (2.1, 10.5, 0.060778456960822666),
        (5.0, 100, 2.450173413503802e-06),
        (40.0, 50, 1.2412423784372691e-39),
        (3.0, 1e6, 0.0026998625414218),
    ],
)
def test_t_two_sided_p_matches_reference(t: float, df: float, expected: float) -> None:
    assert stats.t_two_sided_p(t, df) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize(
    ("q", "df", "expected"),
    [(0.995, 10, 3.16927267261695), (0.975, 3.3, 3.024874461840807), (0.995, 1e5, 2.575878469908375)],
)
def test_t_quantile_matches_reference(q: float, df: float, expected: float) -> None:
    assert stats.t_ppf(q, df) == pytest.approx(expected, rel=1e-7)


def test_kolmogorov_tail_matches_reference() -> None:
    assert stats.kolmogorov_sf(1.36) == pytest.approx(0.049485876755377876, rel=1e-9)
    assert stats.kolmogorov_sf(2.0) == pytest.approx(0.0006709252557796953, rel=1e-9)
    assert stats.kolmogorov_sf(0.1) == 1.0


def test_benjamini_hochberg_matches_reference() -> None:
    adjusted = stats.bh_adjust([0.01, 0.04, 0.03, 0.2, 0.001])
    assert adjusted == pytest.approx([0.025, 0.05, 0.05, 0.2, 0.005])
    assert stats.bh_adjust([]) == []


def test_welch_matches_reference_and_interval_covers_delta() -> None:
    # SciPy's ttest_ind_from_stats(..., equal_var=False) on these summaries: t=1.39368, p=0.165924
    d = stats.welch(50, 0.0, 1.0, 80, 0.36873400533810896, 4.0, alpha=0.05)
    assert d.statistic == pytest.approx(1.3936835400819991, rel=1e-9)
    assert d.p_value == pytest.approx(0.16592441718540496, rel=1e-6)
    assert d.df == pytest.approx(123.0882543, rel=1e-6)
    assert d.ci_low < d.delta < d.ci_high
    assert stats.welch(50, 0.0, 1.0, 80, 0.5, 4.0).p_value < stats.welch(50, 0.0, 1.0, 80, 0.1, 4.0).p_value


def test_welch_on_constant_samples() -> None:
    assert stats.welch(30, 1.0, 0.0, 30, 1.0, 0.0).p_value == 1.0
    assert stats.welch(30, 1.0, 0.0, 30, 0.0, 0.0).p_value == 0.0


def test_cusum_p_values_are_calibrated_under_no_change() -> None:
    rng = random.Random(3)
    n, hits, trials = 200, 0, 400
    for _ in range(trials):
        x = [float(rng.random() < 0.7) for _ in range(n)]
        mu = sum(x) / n
        cs, best = 0.0, 0.0
        for v in x:
            cs += v - mu
            best = max(best, abs(cs))
        sigma = math.sqrt(sum((v - mu) ** 2 for v in x) / (n - 1))
        hits += stats.cusum_p_value(best, sigma, n) < 0.05
    assert hits / trials < 0.09  # nominal 5 %: the test does not flood under the null
    # a step from all-ones to all-zeros half-way: max |cusum| = 50 with n = 200
    assert stats.cusum_p_value(50.0, 0.5, 200) < 1e-6
