"""Baseline vs candidate: the measurement playbook for soft prompts, and the promotion gate.

For every metric both results files share, over the examples both scored (paired by id):

- the mean and the worst-decile mean (mean of the lowest ``ceil(0.1 n)`` scores) of each side;
- per-example differences ``candidate - baseline``: wins, losses, ties, the worst regressions
  (with inputs and outputs when the results files carry them);
- a paired t-test with its confidence interval, a seeded paired bootstrap interval, the Wilcoxon
  signed-rank test and the exact sign test (McNemar's test for 0/1 scores).

**The gate** promotes the candidate only if, for every gated metric (all shared metrics unless
``metrics`` names some):

- it wins on the mean: ``delta > 0``, ``delta >= min_delta``, and (unless
  ``require_significance`` is off) the chosen paired test gives ``p < alpha``;
- it holds the worst decile: ``worst_decile(candidate) - worst_decile(baseline) >=
  -max_worst_decile_drop`` (0 by default: the tail may not get worse at all).

Scores are higher-is-better. ``Comparison.to_dict()`` is the ``--json`` output and
``to_markdown()`` the report.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from trace_ptune.errors import ConfigError, EvalError
from trace_ptune.evals import stats
from trace_ptune.evals.results import ExampleResult, read_results


@dataclass(frozen=True)
class GateConfig:
    """Thresholds of the promotion gate and the statistics behind it."""

    min_delta: float = 0.0
    max_worst_decile_drop: float = 0.0
    alpha: float = 0.05
    test: str = "t"
    require_significance: bool = True
    metrics: tuple[str, ...] = ()
    bootstrap_samples: int = 10_000
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 < self.alpha < 1.0:
            raise ConfigError(f"alpha must be between 0 and 1, got {self.alpha}; 0.05 is usual.")
        if self.test not in stats.TESTS:
            raise ConfigError(f"test {self.test!r} is unknown; use one of {', '.join(stats.TESTS)}.")
        if self.max_worst_decile_drop < 0:
            raise ConfigError(
                f"max_worst_decile_drop must be >= 0, got {self.max_worst_decile_drop}; it is an allowed drop."
            )
        if self.bootstrap_samples < 100:
            raise ConfigError(f"bootstrap_samples must be at least 100, got {self.bootstrap_samples}.")
        if not math.isfinite(self.min_delta):
            raise ConfigError(f"min_delta must be a finite number, got {self.min_delta}.")


@dataclass
class MetricComparison:
    """One metric, both sides, the tests and the gate's verdict on it."""

    metric: str
    n: int
    baseline_mean: float
    candidate_mean: float
    delta: float
    baseline_worst_decile: float
    candidate_worst_decile: float
    worst_decile_delta: float
    worst_decile_ci_low: float
    worst_decile_ci_high: float
    wins: int
    losses: int
    ties: int
    test: str
    p_value: float
    ci_low: float | None
    ci_high: float | None
    tests: dict[str, dict[str, float | None]]
    gated: bool
    passed: bool
    reasons: list[str] = field(default_factory=list)


@dataclass
class Comparison:
    """The whole comparison: metrics, per-example differences, and whether the gate passed."""

    baseline: dict[str, Any]
    candidate: dict[str, Any]
    config: GateConfig
    metrics: list[MetricComparison]
    examples: list[dict[str, Any]]
    missing_in_baseline: list[str]
    missing_in_candidate: list[str]
    warnings: list[str]
    passed: bool
    reasons: list[str]

    def regressions(self, metric: str, top: int | None = None) -> list[dict[str, Any]]:
        """Examples that got worse on ``metric``, worst first."""
        rows = [e for e in self.examples if metric in e["scores"] and e["scores"][metric]["delta"] < 0]
        rows.sort(key=lambda e: (e["scores"][metric]["delta"], e["id"]))
        return rows[:top] if top is not None else rows

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "reasons": list(self.reasons),
            "baseline": self.baseline,
            "candidate": self.candidate,
            "config": {**asdict(self.config), "metrics": list(self.config.metrics)},
            "metrics": [_clean(asdict(m)) for m in self.metrics],
            "examples": [_clean(e) for e in self.examples],
            "missing_in_baseline": self.missing_in_baseline,
            "missing_in_candidate": self.missing_in_candidate,
            "warnings": self.warnings,
        }

    def to_markdown(self, top: int = 10) -> str:
        from trace_ptune.evals.report import markdown

        return markdown(self, top=top)


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def _side(results: Sequence[ExampleResult], path: str | None) -> dict[str, Any]:
    def one(key: str) -> Any:
        values = sorted({str(getattr(r, key)) for r in results if getattr(r, key) is not None})
        return values[0] if len(values) == 1 else (values or None)

    return {
        "path": path,
        "n": len(results),
        "run_id": one("run_id"),
        "adapter_hash": one("adapter_hash"),
        "dataset_hash": one("dataset_hash"),
        "model": one("model"),
        "base_fingerprint": one("base_fingerprint"),
        "errors": sum(1 for r in results if r.error),
    }


def _compare_metric(
    metric: str, b: np.ndarray, c: np.ndarray, cfg: GateConfig, gated: bool
) -> MetricComparison:
    d = c - b
    alpha = cfg.alpha
    t = stats.paired_t(d, alpha)
    boot = stats.paired_bootstrap(d, alpha, n_resamples=cfg.bootstrap_samples, seed=cfg.seed)
    wil = stats.wilcoxon(d)
    sign = stats.sign_test(d)
    chosen = {"t": t, "bootstrap": boot, "wilcoxon": wil, "sign": sign}[cfg.test]
    # Rank tests have no interval of the mean: report the bootstrap one beside them.
    ci = chosen if chosen.ci_low is not None else boot
    bw, cw = stats.worst_decile_mean(b), stats.worst_decile_mean(c)
    wd_low, wd_high = stats.worst_decile_bootstrap(
        b, c, alpha, n_resamples=min(cfg.bootstrap_samples, 2000), seed=cfg.seed
    )
    delta = float(d.mean())
    m = MetricComparison(
        metric=metric,
        n=int(d.size),
        baseline_mean=float(b.mean()),
        candidate_mean=float(c.mean()),
        delta=delta,
        baseline_worst_decile=bw,
        candidate_worst_decile=cw,
        worst_decile_delta=cw - bw,
        worst_decile_ci_low=wd_low,
        worst_decile_ci_high=wd_high,
        wins=int((d > 0).sum()),
        losses=int((d < 0).sum()),
        ties=int((d == 0).sum()),
        test=chosen.test,
        p_value=chosen.p_value,
        ci_low=ci.ci_low,
        ci_high=ci.ci_high,
        tests={
            r.test: {"p_value": r.p_value, "ci_low": r.ci_low, "ci_high": r.ci_high, "statistic": r.statistic}
            for r in (t, boot, wil, sign)
        },
        gated=gated,
        passed=True,
    )
    if gated:
        _gate(m, cfg)
    return m


def _gate(m: MetricComparison, cfg: GateConfig) -> None:
    eps = 1e-12  # float noise must not flip a verdict at an exact threshold
    if m.delta <= eps:
        m.reasons.append(
            f"{m.metric}: mean did not improve ({m.baseline_mean:.4f} -> {m.candidate_mean:.4f})"
        )
    elif m.delta < cfg.min_delta - eps:
        m.reasons.append(f"{m.metric}: mean gain {m.delta:+.4f} is below the required {cfg.min_delta:+.4f}")
    if cfg.require_significance and m.delta > eps and not m.p_value < cfg.alpha:
        m.reasons.append(
            f"{m.metric}: gain {m.delta:+.4f} is not significant ({m.test} p={m.p_value:.3g} >= alpha={cfg.alpha:g})"
        )
    if m.worst_decile_delta < -cfg.max_worst_decile_drop - eps:
        m.reasons.append(
            f"{m.metric}: worst decile fell {m.baseline_worst_decile:.4f} -> {m.candidate_worst_decile:.4f} "
            f"(allowed drop {cfg.max_worst_decile_drop:g})"
        )
    m.passed = not m.reasons


def compare_results(
    baseline: Sequence[ExampleResult],
    candidate: Sequence[ExampleResult],
    config: GateConfig | None = None,
    *,
    baseline_path: str | None = None,
    candidate_path: str | None = None,
) -> Comparison:
    """Compare two eval runs example by example and apply the gate."""
    cfg = config or GateConfig()
    bmap = {r.id: r for r in baseline}
    cmap = {r.id: r for r in candidate}
    common = [r.id for r in baseline if r.id in cmap]
    if not common:
        raise EvalError("the two results files share no example id; run both on the same golden dataset.")
    warnings: list[str] = []
    bside, cside = _side(baseline, baseline_path), _side(candidate, candidate_path)
    if bside["dataset_hash"] and cside["dataset_hash"] and bside["dataset_hash"] != cside["dataset_hash"]:
        warnings.append(
            "the runs used different golden datasets (dataset hashes differ); compared shared ids only"
        )
    shared_metrics = [
        m for m in baseline[0].scores if all(m in bmap[i].scores and m in cmap[i].scores for i in common)
    ]
    if cfg.metrics:
        unknown = [m for m in cfg.metrics if m not in shared_metrics]
        if unknown:
            raise ConfigError(
                f"metric {unknown[0]!r} is not scored in both runs on every shared example; "
                f"choose from {', '.join(shared_metrics) or '(none)'}."
            )
    if not shared_metrics:
        raise EvalError("the two results files share no metric; score both runs with the same scorers.")
    gated = set(cfg.metrics or shared_metrics)
    metrics = []
    for metric in shared_metrics:
        b = np.array([bmap[i].scores[metric] for i in common])
        c = np.array([cmap[i].scores[metric] for i in common])
        metrics.append(_compare_metric(metric, b, c, cfg, metric in gated))
    examples = []
    for i in common:
        br, cr = bmap[i], cmap[i]
        row: dict[str, Any] = {
            "id": i,
            "scores": {
                m: {"baseline": br.scores[m], "candidate": cr.scores[m], "delta": cr.scores[m] - br.scores[m]}
                for m in shared_metrics
            },
        }
        for key, value in (
            ("input", br.input if br.input is not None else cr.input),
            ("expected", br.expected if br.expected is not None else cr.expected),
            ("baseline_output", br.output),
            ("candidate_output", cr.output),
            ("baseline_error", br.error),
            ("candidate_error", cr.error),
        ):
            if value is not None:
                row[key] = value
        examples.append(row)
    reasons = [r for m in metrics for r in m.reasons]
    return Comparison(
        baseline=bside,
        candidate=cside,
        config=cfg,
        metrics=metrics,
        examples=examples,
        missing_in_baseline=[r.id for r in candidate if r.id not in bmap],
        missing_in_candidate=[r.id for r in baseline if r.id not in cmap],
        warnings=warnings,
        passed=not reasons,
        reasons=reasons,
    )


def compare_files(
    baseline: str | Path, candidate: str | Path, config: GateConfig | None = None
) -> Comparison:
    """``compare_results`` over two results files written by ``eval run --out``."""
    return compare_results(
        read_results(baseline),
        read_results(candidate),
        config,
        baseline_path=str(baseline),
        candidate_path=str(candidate),
    )
