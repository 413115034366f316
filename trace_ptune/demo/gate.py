"""The evals gate of the demo: run the golden eval set, compare, and report the verdict.

v1 of each tenant is compared with the base model under a plain instruction (the hard-prompt
baseline); acme's v2 is compared with v1, the adapter it would replace. Both use
``trace_ptune.evals.run_eval`` (traced as ``ptune.eval`` with ``ptune.traffic=eval``) and
``compare_results`` with the default gate: a significant gain on the mean and no worse tail.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trace_ptune.demo.scoring import METRIC, LabelMatch


@dataclass
class GateResult:
    tenant: str
    candidate: str  # e.g. "demo/acme@2"
    against: str  # "base model + instruction" or "demo/acme@1"
    baseline_mean: float
    candidate_mean: float
    passed: bool
    reasons: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "tenant": self.tenant,
            "candidate": self.candidate,
            "against": self.against,
            "metric": METRIC,
            "baseline_mean": self.baseline_mean,
            "candidate_mean": self.candidate_mean,
            "passed": self.passed,
            "reasons": list(self.reasons),
        }

    def line(self) -> str:
        verdict = "[green]PASS[/]" if self.passed else "[red]FAIL[/]"
        why = f" ({self.reasons[0]})" if self.reasons else ""
        return (
            f"{verdict} {self.candidate} vs {self.against}: {METRIC} "
            f"{self.baseline_mean:.3f} -> {self.candidate_mean:.3f}{why}"
        )


def evaluate(
    engine: Any,
    golden: Path,
    scorer: LabelMatch,
    max_new_tokens: int,
    *,
    tenant: str,
    adapter: str | None = None,
    instruction: str | None = None,
) -> Any:
    """One traced eval run of an adapter (or of the base model with ``instruction``)."""
    from trace_ptune.evals import run_eval

    return run_eval(
        golden,
        [scorer],
        engine=engine,
        adapter=adapter,
        baseline_prompt=instruction,
        max_new_tokens=max_new_tokens,
        batch_size=32,
        tenant=tenant,
    )


def compare(
    tenant: str, candidate_label: str, against: str, baseline_run: Any, candidate_run: Any
) -> GateResult:
    from trace_ptune.evals import GateConfig, compare_results

    comparison = compare_results(baseline_run.results, candidate_run.results, GateConfig(metrics=(METRIC,)))
    metric = next(m for m in comparison.metrics if m.metric == METRIC)
    return GateResult(
        tenant=tenant,
        candidate=candidate_label,
        against=against,
        baseline_mean=metric.baseline_mean,
        candidate_mean=metric.candidate_mean,
        passed=comparison.passed,
        reasons=list(comparison.reasons),
    )
