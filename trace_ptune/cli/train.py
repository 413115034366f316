"""``trace-ptune train``: train a soft prompt on a frozen base model.

Options map one to one onto :class:`trace_ptune.tuning.TrainConfig`. Prints the adapter hash,
``name@version`` and where the adapter is stored (``--json`` for one JSON object). Runs under
``torchrun`` unchanged (CPU: gloo); only rank 0 prints and saves.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import click

from trace_ptune.cli._telemetry import configure_telemetry, flush_telemetry
from trace_ptune.cli.output import handle_errors

logger = logging.getLogger(__name__)


@click.command("train")
@click.option("--model", help="Base model: preset (tiny-random, smollm2-135m), local dir, .gguf or hub id.")
@click.option(
    "--data", type=click.Path(dir_okay=False), help="Training JSONL: one {input, target[, id]} per line."
)
@click.option("--eval", "eval_", type=click.Path(dir_okay=False), help="Evaluation JSONL (same format).")
@click.option("--name", help="Adapter name in the store (letters, digits, . _ / -).")
@click.option(
    "--method",
    type=click.Choice(["prompt_tuning", "prefix_tuning", "p_tuning"]),
    default="prompt_tuning",
    show_default=True,
)
@click.option("--virtual-tokens", type=int, default=20, show_default=True, help="Number of virtual tokens.")
@click.option("--init", default="random", show_default=True, help='random | vocab | labels | text:"..."')
@click.option("--lr", type=float, default=3e-2, show_default=True, help="Peak AdamW learning rate.")
@click.option("--weight-decay", type=float, default=0.0, show_default=True)
@click.option(
    "--epochs", type=int, help="Passes over the training data (default 3 when --steps is not given)."
)
@click.option("--steps", type=int, help="Optimizer steps (instead of --epochs).")
@click.option("--batch-size", type=int, default=8, show_default=True)
@click.option(
    "--grad-accum", type=int, default=1, show_default=True, help="Micro-batches per optimizer step."
)
@click.option("--max-length", type=int, default=256, show_default=True, help="Token limit of input + target.")
@click.option(
    "--long-examples",
    type=click.Choice(["truncate", "error"]),
    default="truncate",
    show_default=True,
    help="Over-long examples: truncate the input's start (counted) or refuse.",
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--schedule", type=click.Choice(["linear", "cosine", "constant"]), default="linear", show_default=True
)
@click.option("--warmup-steps", type=int, default=0, show_default=True)
@click.option(
    "--max-grad-norm", type=float, default=1.0, show_default=True, help="Gradient clipping (0: off)."
)
@click.option(
    "--encoder",
    type=click.Choice(["mlp", "lstm"]),
    default="mlp",
    show_default=True,
    help="P-tuning encoder.",
)
@click.option("--encoder-hidden-size", type=int, help="P-tuning encoder width (default: hidden size).")
@click.option("--chat-template", is_flag=True, help="Wrap each input in the model's chat template.")
@click.option("--eval-every", type=int, help="Steps between evaluations (default: every epoch).")
@click.option("--eval-max-new-tokens", type=int, default=16, show_default=True)
@click.option("--eval-at-start", is_flag=True, help="Also evaluate the initial prompt, to compare against.")
@click.option(
    "--scorer",
    "scorers",
    multiple=True,
    help="Extra eval scorer (repeatable): f1, contains, rouge_l, label_accuracy(labels=a|b), module:function.",
)
@click.option(
    "--best-metric",
    default="loss",
    show_default=True,
    help="Metric that picks the best checkpoint: loss, exact_match or a scorer.",
)
@click.option("--patience", type=int, help="Stop after this many evaluations without improvement.")
@click.option(
    "--leakage",
    type=click.Choice(["refuse", "drop", "ignore"]),
    default="refuse",
    show_default=True,
    help="Eval examples also in the training data: refuse, drop them from training, or ignore.",
)
@click.option("--checkpoint-every", type=int, help="Save resumable state + an adapter version every N steps.")
@click.option("--keep-checkpoints", type=int, default=2, show_default=True)
@click.option(
    "--step-span-every", type=int, default=1, show_default=True, help="Emit a step span every N steps."
)
@click.option("--parent", help="Continue from this stored adapter (name, name@version or hash).")
@click.option(
    "--allow-base-mismatch", is_flag=True, help="Allow a parent adapter from another base fingerprint."
)
@click.option(
    "--resume", type=click.Path(file_okay=False), help="Resume a run (run or checkpoint directory)."
)
@click.option(
    "--output-dir",
    type=click.Path(file_okay=False),
    help="Run directory (default: under TRACE_PTUNE_HOME/runs).",
)
@click.option(
    "--dtype", type=click.Choice(["float32", "float64", "bfloat16", "float16"]), help="Base model dtype."
)
@click.option("--device", default="cpu", show_default=True, help="Torch device of the base model.")
@click.option(
    "--multitenant", "tenant_field", help="Train one adapter per value of this field (e.g. tenant)."
)
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON object.")
@handle_errors
def train(
    tenant_field: str | None, as_json: bool, eval_: str | None, max_grad_norm: float, **options: Any
) -> None:
    """Train a soft prompt (prompt, prefix or P-tuning) on a frozen base model.

    \b
    Example:
      trace-ptune train --model smollm2-135m --data train.jsonl --eval eval.jsonl \\
          --name acme/sentiment --virtual-tokens 20 --init labels --steps 100
    """
    from trace_ptune.tuning import TrainConfig
    from trace_ptune.tuning.trainer import run_training

    telemetry = configure_telemetry(service_name="trace-ptune-train")
    options["scorers"] = list(options["scorers"])
    config = TrainConfig(eval=eval_, max_grad_norm=max_grad_norm or None, **options)
    try:
        result = run_training(config, None, tenant_field=tenant_field, batches=None)
    finally:
        flush_telemetry(telemetry)
    if result.store_path is None:  # not rank 0
        return
    summary = result.to_dict()
    if as_json:
        click.echo(json.dumps(summary, indent=2, default=str))
        return
    for tenant, sp in result.soft_prompts.items() if tenant_field else []:
        click.echo(f"{tenant}: {sp.hash}  {sp.name}@{sp.version}")
    click.echo(f"adapter  {result.adapter_hash}")
    click.echo(f"name     {summary['ref']}")
    click.echo(f"stored   {result.store_path}")
    click.echo(f"run      {result.run_id}  ({result.run_dir})")
    metrics = result.metrics
    line = (
        f"loss     {metrics['first_loss']:.4f} -> {metrics['final_loss']:.4f} over {metrics['steps']} steps"
    )
    click.echo(line)
    for label, prefix in (("init", "init_eval_"), ("eval", "eval_")):
        found = {k[len(prefix) :]: v for k, v in metrics.items() if k.startswith(prefix)}
        if found:
            click.echo(f"{label:<8} " + "  ".join(f"{k}={v:.4f}" for k, v in found.items()))
    if metrics["truncated"]:
        click.echo(
            f"note: {metrics['truncated']} examples were longer than --max-length and truncated", err=True
        )
    if metrics["leaked_dropped"]:
        click.echo(
            f"note: dropped {metrics['leaked_dropped']} training examples that occur in the eval set",
            err=True,
        )
