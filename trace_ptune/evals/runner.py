"""``run_eval``: run a model (with a soft prompt, a hard-prompt baseline, or neither) over a golden
dataset through the runtime, score every output, and trace it.

Spans (names from :mod:`trace_ptune.semconv`)::

    ptune.eval                       run id, dataset hash, adapter hash, base model; one
    │                                ptune.eval.metric event per metric (mean, worst decile, n)
    └─ ptune.generate                one per batch (the runtime's call span)
       └─ text_completion {base}     one per example, ptune.traffic=eval, its scores as
                                     gen_ai.evaluation.result events

A generation the runtime refuses (prompt too long, ...) scores 0.0 on every metric with the
label ``error``: a candidate cannot look better by failing on the hard examples.

Example::

    from trace_ptune.evals import run_eval

    run = run_eval("golden.jsonl", "exact_match,f1", model="tiny-random", adapter="support@2",
                   out="candidate.jsonl")
    print(run.metrics["f1"]["mean"])
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trace_ptune import semconv
from trace_ptune.errors import ConfigError, EvalError
from trace_ptune.evals import stats
from trace_ptune.evals.datasets import Example, GoldenDataset, load_golden
from trace_ptune.evals.results import ExampleResult, write_results
from trace_ptune.evals.scorers import Scorer, ScoreResult, apply_scorer, get_scorers
from trace_ptune.telemetry import get_tracer


@dataclass
class EvalRun:
    """What one eval pass measured."""

    run_id: str
    dataset_hash: str
    adapter_hash: str | None
    model: str
    base_fingerprint: str
    metrics: dict[str, dict[str, float]]  # metric -> {"mean", "worst_decile", "n"}
    results: list[ExampleResult] = field(default_factory=list)
    trace_id: str | None = None
    span_id: str | None = None
    out: Path | None = None

    @property
    def n(self) -> int:
        return len(self.results)

    @property
    def errors(self) -> int:
        return sum(1 for r in self.results if r.error)

    def summary_rows(self) -> list[dict[str, Any]]:
        """One row per metric: the ``--json`` output of ``trace-ptune eval run``."""
        return [
            {
                "metric": name,
                "mean": agg["mean"],
                "worst_decile": agg["worst_decile"],
                "n": int(agg["n"]),
                "errors": self.errors,
                "run_id": self.run_id,
                "adapter_hash": self.adapter_hash,
                "dataset_hash": self.dataset_hash,
                "model": self.model,
                "trace_id": self.trace_id,
            }
            for name, agg in self.metrics.items()
        ]


def with_hard_prompt(prompt: str | list[dict[str, Any]], prefix: str | None) -> str | list[dict[str, Any]]:
    """Prepend a baseline hard prompt: text before a plain prompt, a system message before chat."""
    if not prefix:
        return prompt
    if isinstance(prompt, str):
        return prefix + prompt
    return [{"role": "system", "content": prefix}, *prompt]


def run_eval(
    data: str | Path | GoldenDataset,
    scorers: str | Sequence[str | Scorer],
    *,
    model: str | Any | None = None,
    engine: Any | None = None,
    adapter: Any | None = None,
    baseline_prompt: str | None = None,
    limit: int | None = None,
    batch_size: int = 8,
    max_new_tokens: int = 32,
    stop: Sequence[str] = (),
    tenant: str | None = None,
    deployment: str | None = None,
    dtype: Any | None = None,
    device: str = "cpu",
    allow_base_mismatch: bool = False,
    out: str | Path | None = None,
    save_outputs: bool = False,
    tracer_provider: Any | None = None,
    progress: bool | Callable[[int, int], None] = False,
) -> EvalRun:
    """Generate greedily for every example, score, trace, and (with ``out``) write results.

    Give ``engine`` (a :class:`trace_ptune.runtime.Engine`) or ``model`` (a preset, directory,
    ``.gguf`` or hub id, or a loaded ``BaseModel``). ``adapter`` is registered on the engine (a
    store reference, directory or ``SoftPrompt``); ``baseline_prompt`` instead prefixes every
    input with plain text on the base model. Outputs are kept in the results only with
    ``save_outputs`` or content capture on.
    """
    if adapter is not None and baseline_prompt is not None:
        raise ConfigError(
            "give an adapter or a baseline prompt, not both; compare the two runs with `eval compare`."
        )
    if batch_size < 1:
        raise ConfigError(f"batch_size must be at least 1, got {batch_size}.")
    dataset = data if isinstance(data, GoldenDataset) else load_golden(data)
    dataset = dataset.head(limit)
    scorer_list = get_scorers(scorers)
    engine = engine or _engine(model, dtype, device, allow_base_mismatch, tracer_provider)
    base = engine.base
    adapter_ref = None
    sp = None
    if adapter is not None:
        sp = engine.register(adapter)
        adapter_ref = sp.hash  # by hash: a name re-registered meanwhile cannot change what we measure
    keep_content = save_outputs or bool(engine.telemetry.capture_content)
    run_id = uuid.uuid4().hex
    tracer = get_tracer(tracer_provider)
    attributes: dict[str, Any] = {
        semconv.PTUNE_EVAL_RUN_ID: run_id,
        semconv.PTUNE_EVAL_DATASET_HASH: dataset.hash,
        semconv.PTUNE_BASE_MODEL_NAME: base.name,
        semconv.PTUNE_BASE_MODEL_FINGERPRINT: base.fingerprint,
        semconv.PTUNE_TRAFFIC: semconv.TRAFFIC_EVAL,
    }
    if sp is not None:
        attributes[semconv.PTUNE_ADAPTER_HASH] = sp.hash
        attributes[semconv.PTUNE_ADAPTER_METHOD] = sp.method
        if sp.name:
            attributes[semconv.PTUNE_ADAPTER_NAME] = sp.name
        if sp.version is not None:
            attributes[semconv.PTUNE_ADAPTER_VERSION] = sp.version
    for key, value in ((semconv.PTUNE_TENANT, tenant), (semconv.PTUNE_DEPLOYMENT, deployment)):
        if value:
            attributes[key] = value

    scored: dict[str, list[tuple[str, ScoreResult]]] = {}
    failures: list[EvalError] = []
    results: list[ExampleResult] = []
    report = _progress(progress, len(dataset))
    # A failure ends the span with an error status and the exception recorded (the SDK's default).
    with tracer.start_as_current_span(semconv.SPAN_EVAL, attributes=attributes) as span:
        try:
            for start in range(0, len(dataset), batch_size):
                batch = dataset.examples[start : start + batch_size]
                requests = [
                    _request(ex, run_id, adapter_ref, baseline_prompt, max_new_tokens, stop, tenant, deployment,
                             _hook(ex, scorer_list, scored, failures))
                    for ex in batch
                ]  # fmt: skip
                outs = engine.generate(requests)
                if failures:
                    raise failures[0]
                for ex, res in zip(batch, outs, strict=True):
                    results.append(
                        _example_result(ex, res, scorer_list, scored, keep_content, run_id, dataset, base)
                    )
                report(len(results))
            metrics = _aggregate(scorer_list, results)
            for name, agg in metrics.items():
                span.add_event(
                    semconv.EVENT_EVAL_METRIC,
                    {
                        semconv.GEN_AI_EVALUATION_NAME: name,
                        semconv.PTUNE_EVAL_MEAN: agg["mean"],
                        semconv.PTUNE_EVAL_WORST_DECILE: agg["worst_decile"],
                        semconv.PTUNE_EVAL_N: int(agg["n"]),
                    },
                )
        finally:
            report(None)
        ctx = span.get_span_context()
    run = EvalRun(
        run_id=run_id,
        dataset_hash=dataset.hash,
        adapter_hash=sp.hash if sp is not None else None,
        model=base.name,
        base_fingerprint=base.fingerprint,
        metrics=metrics,
        results=results,
        trace_id=format(ctx.trace_id, "032x") if ctx.is_valid else None,
        span_id=format(ctx.span_id, "016x") if ctx.is_valid else None,
    )
    if out is not None:
        run.out = write_results(out, results)
    return run


def _engine(model: Any, dtype: Any, device: str, allow_base_mismatch: bool, tracer_provider: Any) -> Any:
    if model is None:
        raise ConfigError("run_eval needs a model (preset, directory, .gguf or hub id) or an engine.")
    from trace_ptune.runtime import Engine

    if isinstance(model, str | Path):
        from trace_ptune.models import load_model

        model = load_model(str(model), dtype=dtype, device=device)
    return Engine(model, allow_base_mismatch=allow_base_mismatch, tracer_provider=tracer_provider)


def _request(
    ex: Example,
    run_id: str,
    adapter_ref: str | None,
    baseline_prompt: str | None,
    max_new_tokens: int,
    stop: Sequence[str],
    tenant: str | None,
    deployment: str | None,
    hook: Callable[..., Any],
) -> Any:
    from trace_ptune.runtime import GenerationRequest

    return GenerationRequest(
        prompt=with_hard_prompt(ex.input, baseline_prompt),
        adapter=adapter_ref,
        tenant=tenant,
        deployment=deployment,
        traffic=semconv.TRAFFIC_EVAL,
        max_new_tokens=max_new_tokens,
        temperature=0.0,
        stop=tuple(stop),
        request_id=f"{run_id}:{ex.id}",
        scorers=(hook,),
        attributes={semconv.PTUNE_EVAL_EXAMPLE_ID: ex.id, semconv.PTUNE_EVAL_RUN_ID: run_id},
    )


def _hook(
    ex: Example,
    scorers: list[Scorer],
    scored: dict[str, list[tuple[str, ScoreResult]]],
    failures: list[EvalError],
) -> Callable[..., Any]:
    """A runtime scorer hook: runs while the generation span is open, so scores land on it."""

    def score_example(request: Any, result: Any) -> list[Any]:
        from trace_ptune.runtime import Score

        pairs: list[tuple[str, ScoreResult]] = []
        try:
            for sc in scorers:
                pairs.append((sc.name, apply_scorer(sc, result.text, ex)))
        except EvalError as exc:  # the runtime would swallow it: keep it to raise after the batch
            failures.append(exc)
            return []
        scored[ex.id] = pairs
        return [Score(name, r.value, r.label, r.explanation) for name, r in pairs]

    score_example.__name__ = "eval_scorers"
    return score_example


def _example_result(
    ex: Example,
    res: Any,
    scorers: list[Scorer],
    scored: dict[str, list[tuple[str, ScoreResult]]],
    keep_content: bool,
    run_id: str,
    dataset: GoldenDataset,
    base: Any,
) -> ExampleResult:
    if res.error is not None:
        pairs = [(sc.name, ScoreResult(0.0, "error", res.error)) for sc in scorers]
    else:
        pairs = scored.get(ex.id) or [(sc.name, apply_scorer(sc, res.text, ex)) for sc in scorers]
    row = ExampleResult(
        id=ex.id,
        scores={name: r.value for name, r in pairs},
        labels={name: r.label for name, r in pairs if r.label is not None},
        explanations={name: r.explanation for name, r in pairs if r.explanation is not None},
        run_id=run_id,
        adapter_hash=res.adapter_hash,
        dataset_hash=dataset.hash,
        model=base.name,
        base_fingerprint=base.fingerprint,
        response_id=res.response_id,
        trace_id=res.trace_id,
        span_id=res.span_id,
        error=res.error,
    )
    if keep_content:
        row.input, row.expected, row.output = ex.input, ex.expected, res.text
    return row


def _aggregate(scorers: list[Scorer], results: list[ExampleResult]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for sc in scorers:
        values = [r.scores[sc.name] for r in results]
        out[sc.name] = {
            "mean": sum(values) / len(values),
            "worst_decile": stats.worst_decile_mean(values),
            "n": len(values),
        }
    return out


def _progress(progress: bool | Callable[[int, int], None], total: int) -> Callable[[int | None], None]:
    """``report(done)`` per batch and ``report(None)`` at the end; a rich bar on stderr when asked."""
    if callable(progress):
        return lambda done: progress(done, total) if done is not None else None
    if not progress:
        return lambda done: None
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    bar = Progress(
        "eval", BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=Console(stderr=True)
    )
    task = bar.add_task("eval", total=total)
    bar.start()

    def report(done: int | None) -> None:
        if done is None:
            bar.stop()
        else:
            bar.update(task, completed=done)

    return report
