"""``trace-ptune demo``: the whole loop in one command, on a temporary collector and home."""

from __future__ import annotations

import json
import signal
import sys

import click

from trace_ptune.cli.output import handle_errors


@click.command("demo")
@click.option(
    "--model",
    "-m",
    default="smollm2-135m",
    show_default=True,
    help="Base model: smollm2-135m (offline, a few minutes), tiny-random (seconds), a directory or hub id.",
)
@click.option("--keep", is_flag=True, help="Keep the work directory and its DuckDB file (path printed).")
@click.option(
    "--workdir",
    type=click.Path(file_okay=False),
    default=None,
    help="Work directory (new or empty; default: a temporary one, removed unless --keep).",
)
@click.option("--quiet", "-q", is_flag=True, help="No progress output.")
@click.option("--json", "as_json", is_flag=True, help="Print the outcome as one JSON object on stdout.")
@handle_errors
def demo(model: str, keep: bool, workdir: str | None, quiet: bool, as_json: bool) -> None:
    """Train soft prompts for two tenants, gate them, serve mixed traffic, roll one tenant to a
    worse version, and show `trace-ptune query regressions` naming it.

    Everything runs against its own temporary home and collector; the user's adapter store and
    traces are never touched.
    """
    from trace_ptune.demo import DemoConfig, run_demo
    from trace_ptune.demo.report import print_summary

    config = DemoConfig(model=model, workdir=workdir, keep=keep, quiet=quiet or as_json)
    # SIGTERM unwinds like Ctrl-C, so the collector child is always stopped.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    result = run_demo(config)
    if as_json:
        sys.stdout.write(json.dumps(result.to_dict(), indent=2, default=str) + "\n")
    else:
        print_summary(result)


__all__ = ["demo"]
