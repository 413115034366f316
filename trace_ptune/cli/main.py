"""Entry point of the ``trace-ptune`` command.

Command groups are imported lazily so ``trace-ptune query --help`` never loads torch: each
entry maps a command name to ``module:attribute`` plus its one-line help. A command whose
module is not installed (or not written yet) is simply not listed.
"""

from __future__ import annotations

import importlib
import importlib.util

import click

from trace_ptune import __version__

# name -> (module, attribute, short help)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "demo": (
        "trace_ptune.cli.demo",
        "demo",
        "Run the whole loop: train, evaluate, serve, regress, attribute.",
    ),
    "train": ("trace_ptune.cli.train", "train", "Train a soft prompt on a frozen base model."),
    "generate": ("trace_ptune.cli.generate", "generate", "Generate text with soft prompts, batched."),
    "serve": ("trace_ptune.cli.serve", "serve", "Serve soft prompts over an OpenAI-compatible HTTP API."),
    "eval": ("trace_ptune.cli.eval", "eval_group", "Run, compare and gate evaluations; check leakage."),
    "adapters": ("trace_ptune.cli.adapters", "adapters", "Manage the local soft-prompt adapter store."),
    "models": ("trace_ptune.cli.models", "models", "Inspect base models and their fingerprints."),
    "collector": (
        "trace_ptune.cli.collector",
        "collector",
        "Run the OTLP collector that stores traces in DuckDB.",
    ),
    "query": ("trace_ptune.cli.query", "query", "Query traces: adapters, lineage, regressions, SQL."),
}


def _available(name: str) -> bool:
    module = COMMANDS[name][0]
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


class LazyGroup(click.Group):
    """A click group that imports each sub-command only when it is invoked."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return [name for name in COMMANDS if _available(name)]

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMANDS or not _available(cmd_name):
            return None
        module_name, attr, _ = COMMANDS[cmd_name]
        return getattr(importlib.import_module(module_name), attr)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # Short help comes from the table above: listing commands imports nothing heavy.
        rows = [(name, COMMANDS[name][2]) for name in self.list_commands(ctx)]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="trace-ptune")
def cli() -> None:
    """Train, serve and trace soft prompts; tie every regression to the adapter version behind it."""


if __name__ == "__main__":  # pragma: no cover
    cli()
