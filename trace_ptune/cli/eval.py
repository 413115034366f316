"""``trace-ptune eval``: run a model over a golden dataset, compare two runs (the gate), check leakage.

Library first: every command parses options, calls ``trace_ptune.evals`` and prints. Heavy
imports (torch) happen only inside ``eval run``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from trace_ptune.cli._telemetry import configure_telemetry
from trace_ptune.cli.output import emit, handle_errors, output_options


@click.group("eval")
def eval_group() -> None:
    """Run, compare and gate evaluations; check train/eval leakage."""


@eval_group.command("run")
@click.option(
    "--model",
    "-m",
    required=True,
    help="Base model: preset (tiny-random, smollm2-135m), dir, .gguf or hub id.",
)
@click.option(
    "--adapter",
    "-a",
    default=None,
    help="Soft prompt: store name, name@version, hash, deployment or directory.",
)
@click.option(
    "--baseline-prompt",
    default=None,
    help="Plain text prefix (hard prompt) on the base model instead of an adapter.",
)
@click.option(
    "--data",
    "-d",
    "data",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Golden dataset (JSONL: id, input, expected).",
)
@click.option("--scorer", "-s", "scorers", multiple=True, default=("exact_match",), show_default=True,
              help="Scorers, comma-separated or repeated: exact_match, f1, contains, regex(pattern=...), json_valid, "
                   "json_field(field=...), label_accuracy(labels=a|b), rouge_l, or package.module:function.")  # fmt: skip
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Only the first N examples.")
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--stop", multiple=True, help="Stop sequence (repeatable), e.g. --stop '\\n'.")
@click.option("--dtype", default=None, help="Model dtype (float32, bfloat16, float64).")
@click.option("--device", default="cpu", show_default=True)
@click.option(
    "--allow-base-mismatch", is_flag=True, help="Run an adapter on a base model other than its own."
)
@click.option(
    "--out",
    "-o",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write per-example results (JSONL) for `eval compare`.",
)
@click.option(
    "--save-outputs", is_flag=True, help="Keep inputs and outputs in --out even without content capture."
)
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@output_options
@handle_errors
def run_cmd(
    model: str,
    adapter: str | None,
    baseline_prompt: str | None,
    data: Path,
    scorers: tuple[str, ...],
    limit: int | None,
    batch_size: int,
    max_new_tokens: int,
    stop: tuple[str, ...],
    dtype: str | None,
    device: str,
    allow_base_mismatch: bool,
    out: Path | None,
    save_outputs: bool,
    quiet: bool,
    fmt: str,
) -> None:
    """Run a model over a golden dataset and score it.

    MODEL runs with a soft prompt (--adapter), a hard prompt (--baseline-prompt) or neither.
    Records one generation span per example (ptune.traffic=eval) with its scores as
    gen_ai.evaluation.result events, under one ptune.eval span with per-metric aggregates.
    """
    from trace_ptune.evals.runner import run_eval

    configure_telemetry(service_name="trace-ptune-eval")
    stops = tuple(s.replace("\\n", "\n").replace("\\t", "\t") for s in stop)  # --stop '\n' from a shell
    run = run_eval(
        model=model,
        data=data,
        scorers=list(scorers),
        adapter=adapter,
        baseline_prompt=baseline_prompt,
        limit=limit,
        batch_size=batch_size,
        max_new_tokens=max_new_tokens,
        stop=stops,
        dtype=dtype,
        device=device,
        allow_base_mismatch=allow_base_mismatch,
        out=out,
        save_outputs=save_outputs,
        progress=not quiet and fmt == "table",
    )
    title = f"eval {run.run_id} · {run.model} · adapter {(run.adapter_hash or 'none')[:19]} · data {run.dataset_hash[:19]}"
    emit(run.summary_rows(), fmt, columns=["metric", "mean", "worst_decile", "n", "errors"], title=title)
    if out is not None:
        click.echo(f"wrote {run.n} results to {out}", err=True)


@eval_group.command("compare")
@click.argument("baseline", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("candidate", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--metric",
    "metrics",
    multiple=True,
    help="Gate on this metric (repeatable); default: every shared metric.",
)
@click.option(
    "--min-delta", type=float, default=0.0, show_default=True, help="Smallest mean gain that counts as a win."
)
@click.option("--max-worst-decile-drop", type=float, default=0.0, show_default=True,
              help="How far the worst-decile mean may fall (0: not at all).")  # fmt: skip
@click.option(
    "--alpha", type=float, default=0.05, show_default=True, help="Significance level; CIs are at 1 - alpha."
)
@click.option("--test", type=click.Choice(["t", "bootstrap", "wilcoxon", "sign"]), default="t", show_default=True,
              help="Paired test the gate uses (sign = McNemar for 0/1 scores).")  # fmt: skip
@click.option(
    "--no-significance", is_flag=True, help="Gate on the mean gain alone, without a significant test."
)
@click.option("--bootstrap-samples", type=click.IntRange(min=100), default=10_000, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the bootstrap resampling.")
@click.option(
    "--report",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write the Markdown report here.",
)
@click.option(
    "--top",
    type=click.IntRange(min=0),
    default=10,
    show_default=True,
    help="Regressed examples to list per metric.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the comparison as one JSON object.")
@handle_errors
def compare_cmd(
    baseline: Path,
    candidate: Path,
    metrics: tuple[str, ...],
    min_delta: float,
    max_worst_decile_drop: float,
    alpha: float,
    test: str,
    no_significance: bool,
    bootstrap_samples: int,
    seed: int,
    report: Path | None,
    top: int,
    as_json: bool,
) -> None:
    """Compare two eval runs and apply the promotion gate.

    BASELINE and CANDIDATE are results files from `eval run --out`. Exits 0 when the candidate wins on the mean and holds the worst decile, 1 when it does not.
    """
    from trace_ptune.evals.compare import GateConfig, compare_files

    config = GateConfig(
        min_delta=min_delta,
        max_worst_decile_drop=max_worst_decile_drop,
        alpha=alpha,
        test=test,
        require_significance=not no_significance,
        metrics=tuple(metrics),
        bootstrap_samples=bootstrap_samples,
        seed=seed,
    )
    result = compare_files(baseline, candidate, config)
    if report is not None:
        report.parent.mkdir(parents=True, exist_ok=True)
        report.write_text(result.to_markdown(top=top), encoding="utf-8")
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2, ensure_ascii=False))
    else:
        from rich.console import Console

        from trace_ptune.evals.report import render

        render(result, Console(file=sys.stdout, width=max(120, Console().width)), top=top)
    if report is not None:
        click.echo(f"wrote report to {report}", err=True)
    sys.exit(0 if result.passed else 1)


@eval_group.command("leakage")
@click.option(
    "--train",
    "train_path",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Training JSONL (input, target).",
)
@click.option(
    "--eval",
    "eval_path",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Eval or golden JSONL (input, expected|target).",
)
@click.option("--key", type=click.Choice(["input", "input_target"]), default="input", show_default=True,
              help="What makes two examples the same: the normalised input, or input and target together.")  # fmt: skip
@click.option("--no-fail", is_flag=True, help="Exit 0 even when examples overlap.")
@output_options
@handle_errors
def leakage_cmd(train_path: Path, eval_path: Path, key: str, no_fail: bool, fmt: str) -> None:
    """Find eval examples that also occur in the training data.

    The same check the trainer runs before training. Exits 1 when any eval example leaks, unless --no-fail.
    """
    from trace_ptune.evals.leakage import check_leakage

    report = check_leakage(train_path, eval_path, key=key)
    row = report.to_dict()
    emit(
        [row],
        fmt,
        columns=[
            "n_train",
            "n_eval",
            "overlapping_eval",
            "overlapping_train",
            "exact_pairs",
            "fraction",
            "eval_ids",
        ],
        title="train/eval overlap",
    )
    if report.count and not no_fail:
        click.echo(
            f"{report.count} of {report.n_eval} eval examples also occur in {train_path}; remove them from one side.",
            err=True,
        )
        sys.exit(1)
