"""``trace-ptune generate``: one-off generation; several prompts run as one batch.

    trace-ptune generate --model smollm2-135m --adapter support-bot "How do I reset my password?"
    trace-ptune generate --model tiny-random --adapter a --adapter b --adapter - "one" "two" "three"

Which adapter serves which prompt:

- no ``--adapter``: every prompt runs on the base model alone;
- ``--adapter`` once: that adapter serves every prompt;
- ``--adapter`` once per prompt: matched in order; ``-`` means the base model for that prompt.

An adapter is a store reference (name, ``name@version``, deployment, hash or 12+ hex-digit
prefix) or an adapter directory. A request that fails (unknown adapter, prompt too long...) is
reported on its own row; the others complete, and the command exits 1.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from trace_ptune import semconv
from trace_ptune.cli._telemetry import configure_telemetry, flush_telemetry
from trace_ptune.cli.output import emit, handle_errors, output_options

BASE_MODEL_MARK = "-"
COLUMNS = ("prompt", "adapter", "text", "finish_reason", "output_tokens", "error")

logger = logging.getLogger(__name__)


# Options shared with `trace-ptune serve`.
model_option = click.option(
    "--model", "-m", "model_spec", required=True, help="Base model: preset, directory, .gguf or hub id."
)
dtype_option = click.option(
    "--dtype", default=None, help="Load the base in this dtype (float32, float64, bfloat16)."
)
store_option = click.option(
    "--store",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Adapter store root (default: $TRACE_PTUNE_HOME/adapters).",
)
allow_base_mismatch_option = click.option(
    "--allow-base-mismatch", is_flag=True, help="Serve adapters trained on another fingerprint."
)
capture_content_option = click.option(
    "--capture-content", is_flag=True, help="Put prompt and completion text on the spans."
)


def assign_adapters(adapters: tuple[str, ...], count: int) -> list[str | None]:
    """The adapter reference of each of ``count`` prompts (None: the base model)."""
    if not adapters:
        return [None] * count
    if len(adapters) == 1:
        refs = list(adapters) * count
    elif len(adapters) == count:
        refs = list(adapters)
    else:
        raise click.UsageError(
            f"got {len(adapters)} --adapter options for {count} prompts; give one for all prompts "
            f"or one per prompt (use '{BASE_MODEL_MARK}' for the base model)."
        )
    return [None if ref == BASE_MODEL_MARK else ref for ref in refs]


@click.command()
@click.argument("prompts", nargs=-1, required=True)
@model_option
@click.option(
    "--adapter",
    "-a",
    "adapters",
    multiple=True,
    help="Adapter ref or directory; once for all prompts, or once per prompt ('-': base model).",
)
@click.option("--tenant", default=None, help="Tenant recorded on the spans (ptune.tenant).")
@click.option(
    "--deployment",
    default=None,
    help="Deployment (ptune.deployment); with no --adapter, a store deployment picks the adapter.",
)
@click.option(
    "--traffic",
    type=click.Choice(list(semconv.TRAFFIC_KINDS)),
    default=None,
    help="Traffic kind on the spans (default: production).",
)
@click.option("--max-new-tokens", type=int, default=32, show_default=True)
@click.option("--temperature", type=float, default=0.0, show_default=True, help="0 is greedy.")
@click.option("--top-p", type=float, default=1.0, show_default=True)
@click.option("--top-k", type=int, default=0, show_default=True, help="0 disables top-k.")
@click.option("--seed", type=int, default=None, help="Seed of each prompt's sampler.")
@click.option("--stop", "stops", multiple=True, help="Stop string (repeatable); the text ends before it.")
@click.option("--chat", is_flag=True, help="Send each prompt as a user message through the chat template.")
@dtype_option
@store_option
@allow_base_mismatch_option
@capture_content_option
@output_options
@handle_errors
def generate(
    prompts: tuple[str, ...],
    model_spec: str,
    adapters: tuple[str, ...],
    tenant: str | None,
    deployment: str | None,
    traffic: str | None,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    top_k: int,
    seed: int | None,
    stops: tuple[str, ...],
    chat: bool,
    dtype: str | None,
    store: Path | None,
    allow_base_mismatch: bool,
    capture_content: bool,
    fmt: str,
) -> None:
    """Generate text for PROMPTS with soft prompts, all in one batch."""
    refs = assign_adapters(adapters, len(prompts))
    telemetry = configure_telemetry()

    from trace_ptune.adapters.store import AdapterStore
    from trace_ptune.models import load_model
    from trace_ptune.runtime import Engine, GenerationRequest

    base = load_model(model_spec, dtype=dtype)
    engine = Engine(
        base,
        store=AdapterStore(store),
        allow_base_mismatch=allow_base_mismatch,
        capture_content=True if capture_content else None,
    )
    # Directories are registered up front; store references resolve per request, so one bad
    # reference fails its own rows only.
    served: dict[str, str] = {}
    for ref in {r for r in refs if r is not None}:
        served[ref] = engine.register(Path(ref)).hash if Path(ref).is_dir() else ref
    requests = [
        GenerationRequest(
            [{"role": "user", "content": prompt}] if chat else prompt,
            adapter=served[ref] if ref is not None else None,
            tenant=tenant,
            deployment=deployment,
            traffic=traffic,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_p=top_p,
            top_k=top_k,
            seed=seed,
            stop=list(stops),
        )
        for prompt, ref in zip(prompts, refs, strict=True)
    ]
    results = engine.generate(requests)
    rows = []
    for prompt, ref, result in zip(prompts, refs, results, strict=True):
        rows.append({"prompt": prompt, "adapter": ref, **result.to_dict()})
    if fmt == "table":
        for row in rows:
            row["output_tokens"] = row["output_tokens"] if row["error"] is None else None
    emit(rows, fmt, columns=COLUMNS, title=f"generate ({base.name})")
    flush_telemetry(telemetry)
    failed = [r for r in results if r.error is not None]
    if failed:
        for result in failed:
            click.echo(f"error: {result.error}", err=True)
        sys.exit(1)
