"""Regression attribution on seeded traffic with known injected changes."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest

from tests.query.traffic import DAYS, START, Expected, Traffic, generate, scenario, write_duckdb
from trace_ptune import semconv
from trace_ptune.errors import ConfigError, QueryError
from trace_ptune.query import open_source, regressions

REQUIRED = {
    "stream", "tenant", "deployment", "metric", "cause", "before_hash", "after_hash",
    "before_base_fingerprint", "after_base_fingerprint", "before_mean", "after_mean", "delta",
    "ci_low", "ci_high", "p_value", "test", "n_before", "n_after", "worst_decile_before",
    "worst_decile_after", "changed_at",
}  # fmt: skip


def _key(row: dict[str, Any]) -> tuple[str, str]:
    return row["stream"], row["metric"]


def _expected(traffic: Traffic, *, kind: str = semconv.TRAFFIC_PRODUCTION, lower: bool = False) -> dict:
    return {
        (e.stream, e.metric): e
        for e in traffic.expected
        if e.traffic == kind and (lower or not e.lower_is_better)
    }


def _check(row: dict[str, Any], e: Expected) -> None:
    assert row["cause"] == e.cause, row
    assert (row["before_hash"], row["after_hash"]) == (e.before_hash, e.after_hash), row
    assert (row["before_base_fingerprint"], row["after_base_fingerprint"]) == (e.before_base, e.after_base)
    if e.comparison:
        assert row["comparison"] == e.comparison, row
    if e.changed_near is not None:
        changed = dt.datetime.fromisoformat(row["changed_at"].replace("Z", "+00:00")).replace(tzinfo=None)
        expected_at = START + dt.timedelta(days=DAYS * e.changed_near)
        assert abs(changed - expected_at) < dt.timedelta(hours=12), row["changed_at"]


def test_every_injected_regression_is_found_with_its_cause_and_nothing_else(
    traffic: Traffic, traffic_db: Path
) -> None:
    with open_source(db=traffic_db) as source:
        rows = regressions(source)
    expected = _expected(traffic)
    assert sorted(_key(r) for r in rows) == sorted(expected)
    for row in rows:
        _check(row, expected[_key(row)])
        assert row.keys() >= REQUIRED
        assert row["p_value"] < 0.01 and row["delta"] < 0
        assert row["ci_low"] <= row["delta"] <= row["ci_high"] < 0
        assert row["n_before"] >= 30 and row["n_after"] >= 30
        assert row["changed_at"].endswith("Z")
        assert row["stream"] == (
            f"{row['tenant']}/{row['deployment']}" if row["tenant"] else row["deployment"]
        )


def test_row_values_match_the_data(traffic: Traffic, traffic_db: Path) -> None:
    with open_source(db=traffic_db) as source:
        (row,) = regressions(source, tenant="acme", metric="exact_match")
    before = [r.scores["exact_match"] for r in traffic.requests if r.spec.tenant == "acme" and r.version == 1]
    after = [r.scores["exact_match"] for r in traffic.requests if r.spec.tenant == "acme" and r.version == 2]
    assert row["n_before"] == len(before) and row["n_after"] == len(after)
    assert row["before_mean"] == pytest.approx(sum(before) / len(before))
    assert row["after_mean"] == pytest.approx(sum(after) / len(after))
    assert row["delta"] == pytest.approx(row["after_mean"] - row["before_mean"])
    k = max(1, -(-len(after) // 10))
    assert row["worst_decile_after"] == pytest.approx(sum(sorted(after)[:k]) / k)
    assert (row["before_adapter"], row["before_version"], row["after_version"]) == ("acme-support", 1, 2)
    assert row["test"] == "welch_t"


def test_canary_is_compared_with_what_it_ran_beside(traffic_db: Path) -> None:
    with open_source(db=traffic_db) as source:
        (row,) = regressions(source, deployment="chat@prod")
    assert row["comparison"] == "canary"
    # the window starts when the canary appeared and ends when the old version stopped
    start = dt.datetime.fromisoformat(row["window_start"].replace("Z", "+00:00")).replace(tzinfo=None)
    end = dt.datetime.fromisoformat(row["window_end"].replace("Z", "+00:00")).replace(tzinfo=None)
    assert abs(start - (START + dt.timedelta(days=DAYS * 0.4))) < dt.timedelta(hours=3)
    assert abs(end - (START + dt.timedelta(days=DAYS * 0.7))) < dt.timedelta(hours=3)


def test_lower_is_better_turns_a_rise_into_a_regression(traffic: Traffic, traffic_db: Path) -> None:
    with open_source(db=traffic_db) as source:
        plain = regressions(source, tenant="wayne")
        flagged = regressions(source, tenant="wayne", lower_is_better=["toxicity"])
    assert plain == []
    (row,) = flagged
    _check(row, _expected(traffic, lower=True)[_key(row)])
    assert row["delta"] > 0 and row["lower_is_better"] is True
    # the worst decile of a lower-is-better metric is its highest scores
    assert row["worst_decile_after"] > row["after_mean"]


def test_eval_traffic_is_separate_from_production(traffic: Traffic, traffic_db: Path) -> None:
    with open_source(db=traffic_db) as source:
        rows = regressions(source, traffic=semconv.TRAFFIC_EVAL)
    expected = _expected(traffic, kind=semconv.TRAFFIC_EVAL)
    assert sorted(_key(r) for r in rows) == sorted(expected)
    for row in rows:
        _check(row, expected[_key(row)])


def test_filters_narrow_the_report(traffic_db: Path) -> None:
    with open_source(db=traffic_db) as source:
        assert {r["metric"] for r in regressions(source, metric="f1")} == {"f1"}
        assert {r["tenant"] for r in regressions(source, tenant=["acme", "initech"])} == {"acme", "initech"}
        assert [r["stream"] for r in regressions(source, deployment="hooli-search")] == ["hooli-search"]
        # only the last two days: every change happened before, so nothing can be compared
        assert regressions(source, since=START + dt.timedelta(days=DAYS - 2)) == []
        # a min_n above every side's count makes every comparison impossible
        assert regressions(source, min_n=5000) == []


def test_late_scores_are_placed_at_generation_time(traffic_db: Path) -> None:
    with open_source(db=traffic_db) as source:
        (row,) = regressions(source, tenant="initech")
    assert row["cause"] == semconv.CAUSE_BASE_MODEL_CHANGED
    changed = dt.datetime.fromisoformat(row["changed_at"].replace("Z", "+00:00")).replace(tzinfo=None)
    # scores were recorded an hour late; the change is at the generation that first used base b
    assert abs(changed - (START + dt.timedelta(days=DAYS * 0.55))) < dt.timedelta(minutes=50)


def test_no_change_streams_produce_no_report(tmp_path: Path) -> None:
    # 50 streams x 3 metrics with no change (20 of them swapping to an equally good adapter)
    specs, _ = scenario(no_change_streams=50, neutral_swaps=20)
    quiet = generate([s for s in specs if s.adapter.startswith("svc")], [], seed=11)
    db = write_duckdb(tmp_path / "quiet.duckdb", quiet, lineage=False)
    with open_source(db=db) as source:
        assert regressions(source) == []
        # a lax alpha still controls the false discovery rate over the ~200 comparisons
        assert len(regressions(source, alpha=0.05)) <= 2


def test_bad_arguments_are_one_sentence_errors(traffic_db: Path) -> None:
    with open_source(db=traffic_db) as source:
        with pytest.raises(ConfigError, match="min_n"):
            regressions(source, min_n=1)
        with pytest.raises(ConfigError, match="alpha"):
            regressions(source, alpha=1.5)
        with pytest.raises(QueryError, match="Cannot read the time"):
            regressions(source, since="last tuesday")


def test_missing_database_is_reported(tmp_path: Path) -> None:
    with pytest.raises(QueryError, match="No trace database"):
        regressions(db=str(tmp_path / "absent.duckdb"))
