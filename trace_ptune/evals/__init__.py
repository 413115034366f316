"""Evals: golden datasets, scorers, baseline-vs-candidate comparison with a gate, online evaluators.

- ``load_golden(path)``: a hashed golden dataset (``GoldenDataset``, ``Example``).
- ``get_scorer(spec)`` / ``get_scorers(specs)``: built-in and custom scorers (``Scorer``,
  ``ScoreResult``, ``@scorer``); see :mod:`trace_ptune.evals.scorers`.
- ``run_eval(...)``: run a model through the runtime over a dataset, traced (needs ``[train]``).
- ``compare_files`` / ``compare_results`` with ``GateConfig``: the promotion gate.
- ``OnlineEvaluator`` and ``LabelJoiner``: score production traffic, now or when labels arrive.

Names are loaded on first use, so importing this package pulls in neither torch nor scipy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from trace_ptune._lazy import lazy_exports

_EXPORTS: dict[str, str] = {
    "Example": "trace_ptune.evals.datasets",
    "GoldenDataset": "trace_ptune.evals.datasets",
    "load_golden": "trace_ptune.evals.datasets",
    "dataset_hash": "trace_ptune.evals.datasets",
    "Scorer": "trace_ptune.evals.scorers",
    "ScoreResult": "trace_ptune.evals.scorers",
    "scorer": "trace_ptune.evals.scorers",
    "get_scorer": "trace_ptune.evals.scorers",
    "get_scorers": "trace_ptune.evals.scorers",
    "register_scorer": "trace_ptune.evals.scorers",
    "ExampleResult": "trace_ptune.evals.results",
    "read_results": "trace_ptune.evals.results",
    "write_results": "trace_ptune.evals.results",
    "GateConfig": "trace_ptune.evals.compare",
    "Comparison": "trace_ptune.evals.compare",
    "compare_results": "trace_ptune.evals.compare",
    "compare_files": "trace_ptune.evals.compare",
    "run_eval": "trace_ptune.evals.runner",
    "EvalRun": "trace_ptune.evals.runner",
    "OnlineEvaluator": "trace_ptune.evals.online",
    "LabelJoiner": "trace_ptune.evals.online",
    "check_leakage": "trace_ptune.evals.leakage",
}

__all__ = [
    "Comparison",
    "EvalRun",
    "Example",
    "ExampleResult",
    "GateConfig",
    "GoldenDataset",
    "LabelJoiner",
    "OnlineEvaluator",
    "ScoreResult",
    "Scorer",
    "check_leakage",
    "compare_files",
    "compare_results",
    "dataset_hash",
    "get_scorer",
    "get_scorers",
    "load_golden",
    "read_results",
    "register_scorer",
    "run_eval",
    "scorer",
    "write_results",
]

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)


if TYPE_CHECKING:
    from trace_ptune.evals.compare import Comparison, GateConfig, compare_files, compare_results
    from trace_ptune.evals.datasets import Example, GoldenDataset, dataset_hash, load_golden
    from trace_ptune.evals.leakage import check_leakage
    from trace_ptune.evals.online import LabelJoiner, OnlineEvaluator
    from trace_ptune.evals.results import ExampleResult, read_results, write_results
    from trace_ptune.evals.runner import EvalRun, run_eval
    from trace_ptune.evals.scorers import (
        Scorer,
        ScoreResult,
        get_scorer,
        get_scorers,
        register_scorer,
        scorer,
    )
