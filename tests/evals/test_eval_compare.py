"""Paired statistics against hand-computed values, the promotion gate, and `eval compare` exit codes."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from click.testing import CliRunner
from scipy import stats as sps

from trace_ptune.cli.eval import eval_group
from trace_ptune.errors import ConfigError, EvalError
from trace_ptune.evals import stats
from trace_ptune.evals.compare import GateConfig, compare_results
from trace_ptune.evals.results import ExampleResult

DIFFS = [0.1, 0.2, 0.3, 0.0, -0.1]


def results_rows(scores: dict[str, list[float]], **extra) -> list[dict]:
    n = len(next(iter(scores.values())))
    return [{"id": str(i), "scores": {m: v[i] for m, v in scores.items()}, **extra} for i in range(n)]


def test_worst_decile_mean_takes_ceil_of_ten_percent():
    assert stats.worst_decile_mean([5, 1, 4, 2, 3]) == 1.0  # ceil(0.5) = 1 value
    assert stats.worst_decile_mean(list(range(20))) == 0.5  # 2 values: 0 and 1
    assert stats.worst_decile_mean(list(range(21))) == 1.0  # ceil(2.1) = 3 values: 0, 1, 2
    assert stats.worst_decile_mean(list(range(10))) == 0.0  # exactly 1 value, no float round-up
    assert math.isnan(stats.worst_decile_mean([]))


def test_paired_t_matches_hand_computation():
    r = stats.paired_t(DIFFS, alpha=0.05)
    # mean 0.1, sample sd sqrt(0.1/4), se = sd/sqrt(5)
    se = math.sqrt(0.1 / 4) / math.sqrt(5)
    assert r.statistic == pytest.approx(0.1 / se)
    assert r.statistic == pytest.approx(math.sqrt(2))
    half = 2.7764451051977987 * se  # t(0.975, df=4)
    assert (r.ci_low, r.ci_high) == (pytest.approx(0.1 - half), pytest.approx(0.1 + half))
    base = np.full(5, 0.5)
    assert r.p_value == pytest.approx(sps.ttest_rel(base + DIFFS, base).pvalue)
    assert r.p_value == pytest.approx(0.2302, abs=1e-4)


def test_paired_t_degenerate_cases():
    assert stats.paired_t([0.0, 0.0, 0.0]).p_value == 1.0
    same_gain = stats.paired_t([0.05] * 10)
    assert same_gain.p_value == 0.0 and same_gain.ci_low == same_gain.ci_high == pytest.approx(0.05)
    assert stats.paired_t([0.3]).p_value == 1.0


def test_sign_test_is_exact_binomial():
    r = stats.sign_test(DIFFS)  # 3 wins, 1 loss, 1 tie -> 2 * (C(4,0)+C(4,1)) / 16
    assert r.p_value == pytest.approx(10 / 16)
    assert stats.sign_test([1] * 10).p_value == pytest.approx(2 / 1024)
    assert stats.sign_test([0, 0]).p_value == 1.0


def test_wilcoxon_ranks_ties_and_drops_zeros():
    r = stats.wilcoxon(DIFFS)
    # |d| of the non-zero diffs: 0.1, 0.2, 0.3, 0.1 -> ranks 1.5, 3, 4, 1.5; W- = 1.5
    assert r.statistic == pytest.approx(1.5)
    assert r.p_value == pytest.approx(sps.wilcoxon([0.1, 0.2, 0.3, -0.1]).pvalue)
    assert stats.wilcoxon([0, 0, 0]).p_value == 1.0


def test_bootstrap_is_seeded_and_brackets_the_mean():
    a = stats.paired_bootstrap(DIFFS, n_resamples=2000, seed=7)
    b = stats.paired_bootstrap(DIFFS, n_resamples=2000, seed=7)
    assert a == b
    assert a.ci_low < 0.1 < a.ci_high
    # the bootstrap mean of resampled diffs can never leave [min, max] of the data
    assert a.ci_low >= -0.1 and a.ci_high <= 0.3
    clear = stats.paired_bootstrap(np.linspace(0.1, 0.3, 30), n_resamples=2000, seed=0)
    assert clear.p_value == pytest.approx(1 / 2001)


def _results(scores: dict[str, list[float]], **extra) -> list[ExampleResult]:
    return [ExampleResult.from_row(r, "test") for r in results_rows(scores, **extra)]


def test_compare_numbers_and_per_example_diffs():
    base = _results({"em": [1, 0, 0, 1, 0, 1, 0, 0, 1, 0]})
    cand = _results({"em": [1, 1, 1, 1, 1, 1, 0, 1, 0, 1]})
    c = compare_results(base, cand)
    (m,) = c.metrics
    assert (m.n, m.baseline_mean, m.candidate_mean) == (10, 0.4, 0.8)
    assert m.delta == pytest.approx(0.4)
    assert (m.wins, m.losses, m.ties) == (5, 1, 4)
    assert m.tests["sign"]["p_value"] == pytest.approx(2 * 7 / 64)
    assert [e["id"] for e in c.regressions("em")] == ["8"]
    assert c.examples[8]["scores"]["em"] == {"baseline": 1.0, "candidate": 0.0, "delta": -1.0}


def test_gate_passes_a_clear_win():
    rng = np.random.default_rng(0)
    b = rng.uniform(0.3, 0.6, 50)
    base, cand = _results({"f1": list(b)}), _results({"f1": list(b + 0.1)})
    c = compare_results(base, cand)
    assert c.passed, c.reasons


def test_gate_fails_when_the_worst_decile_drops_even_if_the_mean_wins():
    b = [0.5] * 40
    cand = [0.9] * 36 + [0.0] * 4  # mean 0.81 > 0.5, but the tail collapses
    c = compare_results(_results({"s": b}), _results({"s": cand}), GateConfig(require_significance=False))
    assert not c.passed
    assert any("worst decile fell" in r for r in c.reasons)
    relaxed = GateConfig(require_significance=False, max_worst_decile_drop=0.5)
    assert compare_results(_results({"s": b}), _results({"s": cand}), relaxed).passed


def test_gate_needs_significance_unless_told_otherwise():
    base = _results({"em": [0, 1, 0, 1, 0, 1]})
    cand = _results({"em": [1, 1, 0, 1, 0, 1]})  # one win out of six
    c = compare_results(base, cand)
    assert not c.passed and any("not significant" in r for r in c.reasons)
    assert compare_results(base, cand, GateConfig(require_significance=False)).passed


def test_gate_min_delta_and_identical_runs():
    b = list(np.linspace(0, 1, 30))
    small = [x + 0.01 for x in b]
    assert not compare_results(_results({"m": b}), _results({"m": small}), GateConfig(min_delta=0.05)).passed
    assert compare_results(_results({"m": b}), _results({"m": small}), GateConfig(min_delta=0.005)).passed
    same = compare_results(_results({"m": b}), _results({"m": b}))
    assert not same.passed and "did not improve" in same.reasons[0]


def test_gate_only_on_chosen_metrics():
    base = _results({"good": [0.1] * 20, "bad": [0.9] * 20})
    cand = _results({"good": [0.9] * 20, "bad": [0.1] * 20})
    assert not compare_results(base, cand).passed
    c = compare_results(base, cand, GateConfig(metrics=("good",)))
    assert c.passed and [m.gated for m in c.metrics] == [True, False]
    with pytest.raises(ConfigError, match="'nope'"):
        compare_results(base, cand, GateConfig(metrics=("nope",)))


def test_compare_pairs_by_id_and_warns_on_dataset_mismatch():
    base = _results({"m": [0.0, 0.5, 1.0]}, dataset_hash="sha256:aa")
    cand = [r for r in _results({"m": [1.0, 1.0, 1.0]}, dataset_hash="sha256:bb") if r.id != "1"]
    c = compare_results(base, cand)
    assert c.metrics[0].n == 2 and c.missing_in_candidate == ["1"]
    assert "dataset hashes differ" in c.warnings[0]
    with pytest.raises(EvalError, match="share no example id"):
        compare_results(base, [ExampleResult(id="zz", scores={"m": 1.0})])


def test_gate_config_is_validated():
    with pytest.raises(ConfigError, match="alpha"):
        GateConfig(alpha=1.5)
    with pytest.raises(ConfigError, match="test"):
        GateConfig(test="anova")


# ---------------------------------------------------------------- CLI


def _files(jsonl, base_scores, cand_scores, **extra):
    return (
        str(jsonl("base.jsonl", results_rows(base_scores, **extra))),
        str(jsonl("cand.jsonl", results_rows(cand_scores, **extra))),
    )


def test_cli_compare_exit_zero_when_the_gate_passes(jsonl, tmp_path):
    b, c = _files(
        jsonl, {"f1": [0.2 + 0.01 * i for i in range(30)]}, {"f1": [0.4 + 0.01 * i for i in range(30)]}
    )
    report = tmp_path / "report.md"
    res = CliRunner().invoke(eval_group, ["compare", b, c, "--report", str(report)])
    assert res.exit_code == 0, res.output
    assert "gate: PASS" in res.output
    text = report.read_text()
    assert text.startswith("# Eval comparison") and "PASS" in text and "| f1 | 30 |" in text


def test_cli_compare_exit_one_when_the_gate_fails_and_json_parses(jsonl):
    b, c = _files(
        jsonl,
        {"em": [1, 0] * 10},
        {"em": [0, 0] * 10},
        input="question?",
    )
    res = CliRunner().invoke(eval_group, ["compare", b, c, "--json"])
    assert res.exit_code == 1
    data = json.loads(res.stdout)
    assert data["passed"] is False
    assert data["metrics"][0]["metric"] == "em" and data["metrics"][0]["delta"] == pytest.approx(-0.5)
    assert len(data["examples"]) == 20 and data["examples"][0]["input"] == "question?"
    assert set(data["metrics"][0]["tests"]) == {"paired_t", "bootstrap", "wilcoxon", "sign"}


def test_cli_compare_thresholds_change_the_verdict(jsonl):
    b, c = _files(jsonl, {"s": [0.5] * 40}, {"s": [0.9] * 36 + [0.0] * 4})
    runner = CliRunner()
    assert runner.invoke(eval_group, ["compare", b, c, "--json"]).exit_code == 1
    res = runner.invoke(
        eval_group, ["compare", b, c, "--json", "--max-worst-decile-drop", "0.6", "--test", "sign"]
    )
    assert res.exit_code == 0, res.output
    res = runner.invoke(
        eval_group, ["compare", b, c, "--json", "--max-worst-decile-drop", "0.6", "--min-delta", "0.5"]
    )
    assert res.exit_code == 1


def test_cli_compare_errors_are_one_sentence(jsonl, tmp_path):
    b, c = _files(jsonl, {"s": [0.5] * 5}, {"s": [0.6] * 5})
    res = CliRunner().invoke(eval_group, ["compare", b, str(tmp_path / "missing.jsonl")])
    assert res.exit_code == 1 and "does not exist" in res.output and "Traceback" not in res.output
    res = CliRunner().invoke(eval_group, ["compare", b, c, "--metric", "bleu"])
    assert res.exit_code == 1 and "'bleu'" in res.output


# ---------------------------------------------------------------- leakage


def test_cli_leakage_reports_overlap_and_exits_one(jsonl):
    train = jsonl(
        "train.jsonl",
        [
            {"input": "What is 2+2?", "target": "4"},
            {"input": "Capital of France?", "target": "Paris"},
            {"input": "unrelated", "target": "x"},
        ],
    )
    golden = jsonl(
        "golden.jsonl",
        [
            {"id": "g1", "input": "  what is 2+2? ", "expected": "4"},
            {"id": "g2", "input": "Capital of France?", "expected": "Lyon"},
            {"id": "g3", "input": "fresh question", "expected": "y"},
        ],
    )
    runner = CliRunner()
    res = runner.invoke(eval_group, ["leakage", "--train", str(train), "--eval", str(golden), "--json"])
    assert res.exit_code == 1
    (row,) = json.loads(res.stdout)
    assert (row["n_train"], row["n_eval"], row["overlapping_eval"]) == (3, 3, 2)
    assert row["eval_ids"] == ["g1", "g2"] and row["exact_pairs"] == 1
    res = runner.invoke(
        eval_group,
        ["leakage", "--train", str(train), "--eval", str(golden), "--key", "input_target", "--json"],
    )
    assert json.loads(res.stdout)[0]["eval_ids"] == ["g1"]
    clean = jsonl("clean.jsonl", [{"id": "c", "input": "brand new", "expected": "z"}])
    res = runner.invoke(eval_group, ["leakage", "--train", str(train), "--eval", str(clean), "--json"])
    assert res.exit_code == 0 and json.loads(res.stdout)[0]["overlapping_eval"] == 0
    res = runner.invoke(eval_group, ["leakage", "--train", str(train), "--eval", str(golden), "--no-fail"])
    assert res.exit_code == 0
