"""The demo's final output: the regressions table and where to dig further."""

from __future__ import annotations

import shlex
from typing import Any

from trace_ptune.demo.story import DemoResult

REGRESSION_COLUMNS = ["stream", "metric", "cause", "before", "after", "change", "ci", "p_value", "n"]


def _adapter(name: str | None, version: int | None, adapter_hash: str | None) -> str:
    short = (adapter_hash or "").removeprefix("sha256:")[:12]
    if name and version is not None:
        return f"{name}@{version} ({short})"
    return name or short or "base"


def regression_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows shaped like the table of ``trace-ptune query regressions``."""
    return [
        {
            **r,
            "before": _adapter(r["before_adapter"], r["before_version"], r["before_hash"]),
            "after": _adapter(r["after_adapter"], r["after_version"], r["after_hash"]),
            "change": f"{r['before_mean']:.3f} → {r['after_mean']:.3f}",
            "ci": f"[{r['ci_low']:+.3f}, {r['ci_high']:+.3f}]",
            "n": f"{r['n_before']}/{r['n_after']}",
        }
        for r in rows
    ]


def pointers(result: DemoResult) -> list[str]:
    """The commands that explore what the demo left behind (only meaningful with --keep)."""
    db = shlex.quote(str(result.db))
    lines = [
        f"trace-ptune query regressions --db {db}",
        f"trace-ptune query adapters --db {db}",
        f"trace-ptune query lineage demo/acme@2 --db {db}",
        f'trace-ptune query sql --db {db} "SELECT tenant, adapter_name, count(*) FROM evaluations GROUP BY ALL"',
        f"trace-ptune collector run --db {db} --pg 127.0.0.1:5433   # then: psql postgresql://127.0.0.1:5433/traces",
        "Grafana: see dashboards/README.md (built-in PostgreSQL data source on the --pg endpoint)",
    ]
    return lines


def print_summary(result: DemoResult) -> None:
    """Human output: the regressions table on stdout, the pointers on stderr."""
    import click

    from trace_ptune.cli.output import emit

    emit(regression_rows(result.regressions), "table", columns=REGRESSION_COLUMNS, title="Regressions")
    regressed = [r for r in result.regressions if r["cause"] == "adapter_changed"]
    for r in regressed:
        click.echo(
            f"\n{r['stream']}: {r['metric']} fell {r['before_mean']:.3f} → {r['after_mean']:.3f} "
            f"when {_adapter(r['after_adapter'], r['after_version'], r['after_hash'])} replaced "
            f"{_adapter(r['before_adapter'], r['before_version'], r['before_hash'])}.",
        )
    if not result.regressions:
        click.echo("No significant regressions were found.", err=True)
    if result.kept:
        click.echo(f"\nKept the traces in {result.db}. Dig further with:", err=True)
        for line in pointers(result):
            click.echo(f"  {line}", err=True)
    else:
        click.echo("\nRun `trace-ptune demo --keep` to keep the traces and explore them.", err=True)
    click.echo(f"Demo finished in {result.timings.get('total_s', 0):.0f} s.", err=True)
