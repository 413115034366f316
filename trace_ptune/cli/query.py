"""``trace-ptune query``: read traces from a running collector or a DuckDB file.

Data source, in order: ``--collector URL``, ``$TRACE_PTUNE_COLLECTOR``, ``--db PATH`` (through its
collector when ``<db>.collector.json`` names a live one, else read-only), the default database.
Nothing heavy is imported until a command runs, so ``--help`` stays instant.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import click

from trace_ptune.cli.output import emit, handle_errors, output_options

F = TypeVar("F", bound=Callable[..., Any])


def source_options(func: F) -> F:
    """``--db``, ``--collector`` and ``--token``, turned into an open ``source`` argument."""

    @click.option(
        "--db", type=click.Path(dir_okay=False), default=None, help="DuckDB file to read (read-only)."
    )
    @click.option(
        "--collector",
        metavar="URL",
        default=None,
        help="Query a running collector (default: $TRACE_PTUNE_COLLECTOR).",
    )
    @click.option(
        "--token", default=None, help="Bearer token of the collector (default: $TRACE_PTUNE_TOKEN)."
    )
    @functools.wraps(func)
    def wrapper(*args: Any, db: str | None, collector: str | None, token: str | None, **kwargs: Any) -> Any:
        from trace_ptune.query.source import open_source

        with open_source(db=db, collector=collector, token=token) as source:
            return func(*args, source=source, **kwargs)

    return wrapper  # type: ignore[return-value]


def _adapter_label(name: str | None, version: int | None, h: str | None) -> str:
    from trace_ptune.query._common import short_hash

    if name and version is not None:
        return f"{name}@{version}"
    return short_hash(h) or (name or "")


def _with_adapter(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows for a table, each with an ``adapter`` column (name@version, else the short hash)."""
    return [
        {**r, "adapter": _adapter_label(r["adapter_name"], r["adapter_version"], r["adapter_hash"])}
        for r in rows
    ]


def _minute(iso: str | None) -> str:
    """``2025-03-07T05:37:32.81Z`` -> ``2025-03-07 05:37Z`` for tables."""
    return f"{iso[:10]} {iso[11:16]}Z" if iso and len(iso) >= 16 else (iso or "")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def query() -> None:
    """Query traces: adapters, lineage, traces, SQL, and regression attribution."""


@query.command("regressions")
@click.option("--metric", "metrics", multiple=True, help="Only this metric (repeatable).")
@click.option("--since", default=None, help="Only scores since: 7d, 24h, 30m or an ISO date.")
@click.option("--until", default=None, help="Only scores before: 7d, 24h, 30m or an ISO date.")
@click.option("--deployment", "deployments", multiple=True, help="Only this deployment (repeatable).")
@click.option("--tenant", "tenants", multiple=True, help="Only this tenant (repeatable).")
@click.option(
    "--traffic", default="production", show_default=True, help="Traffic kind: production, eval, train."
)
@click.option(
    "--min-n", type=click.IntRange(min=2), default=30, show_default=True, help="Scores needed per side."
)
@click.option(
    "--alpha",
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    default=0.01,
    show_default=True,
    help="False discovery rate across every comparison, and the interval's level.",
)
@click.option(
    "--lower-is-better", "lower", multiple=True, metavar="METRIC", help="Metric where lower is better."
)
@click.option("--fail-on-regression", is_flag=True, help="Exit 1 when anything is reported (cron, CI).")
@handle_errors
@source_options
@output_options
def regressions_cmd(
    source: Any,
    fmt: str,
    metrics: Sequence[str],
    since: str | None,
    until: str | None,
    deployments: Sequence[str],
    tenants: Sequence[str],
    traffic: str,
    min_n: int,
    alpha: float,
    lower: Sequence[str],
    fail_on_regression: bool,
) -> None:
    """Significant worsenings per stream and metric, with the adapter/base change behind each.

    A stream is (tenant, deployment). Each version (adapter hash, base fingerprint) is compared
    with the one it replaced (canaries first with what they ran beside), and each version's own
    scores are searched for a change point (cause: unattributed). p-values are adjusted for the
    false discovery rate across every comparison made.
    """
    from trace_ptune.query import regressions

    rows = regressions(
        source,
        metric=list(metrics),
        since=since,
        until=until,
        deployment=list(deployments),
        tenant=list(tenants),
        traffic=traffic,
        min_n=min_n,
        alpha=alpha,
        lower_is_better=list(lower),
    )
    if fmt == "table":
        shown = [
            {
                **r,
                "before": _adapter_label(r["before_adapter"], r["before_version"], r["before_hash"]),
                "after": _adapter_label(r["after_adapter"], r["after_version"], r["after_hash"]),
                "change": f"{r['before_mean']:.3f} → {r['after_mean']:.3f}",
                "ci": f"[{r['ci_low']:+.3f}, {r['ci_high']:+.3f}]",
                "n": f"{r['n_before']}/{r['n_after']}",
                "at": _minute(r["changed_at"]),
            }
            for r in rows
        ]
        cols = ["stream", "metric", "cause", "before", "after", "change", "ci", "p_value", "n", "at"]
        emit(shown, fmt, columns=cols, title="Regressions")
    else:
        emit(rows, fmt)
    if not rows:
        click.echo("No significant regressions.", err=True)
    if fail_on_regression and rows:
        click.echo(f"{len(rows)} regression(s) found.", err=True)
        sys.exit(1)


@query.command("adapters")
@click.option("--name", default=None, help="Only adapters with this name.")
@handle_errors
@source_options
@output_options
def adapters_cmd(source: Any, fmt: str, name: str | None) -> None:
    """Every adapter hash seen: name, version, parent, base model, first/last seen, requests, scores."""
    from trace_ptune.query._common import short_hash
    from trace_ptune.query.adapters import adapters

    rows = adapters(source, name=name)
    if fmt == "table":
        shown = [
            {
                **r,
                "hash": short_hash(r["adapter_hash"]),
                "adapter": _adapter_label(r["adapter_name"], r["adapter_version"], None) or "",
                "parent": short_hash(r["parent_hash"]),
                "base": r["base_model_name"] or short_hash(r["base_fingerprint"]),
                "score means": " ".join(f"{m}={v:.3f}" for m, v in r["scores"].items()),
            }
            for r in rows
        ]
        cols = ["hash", "adapter", "parent", "base", "first_seen", "last_seen", "requests", "score means"]
        emit(shown, fmt, columns=cols, title="Adapters")
    else:
        emit(rows, fmt)


@query.command("lineage")
@click.argument("ref")
@handle_errors
@source_options
@output_options
def lineage_cmd(source: Any, fmt: str, ref: str) -> None:
    """Training run → checkpoint → eval → rollout → production for REF (hash, name or name@version)."""
    from trace_ptune.query.lineage import lineage

    rows = lineage(source, ref)
    if fmt == "table":
        shown = _with_adapter(rows)
        emit(shown, fmt, columns=["time", "stage", "adapter", "detail"], title=f"Lineage of {ref}")
    else:
        emit(rows, fmt)


@query.command("traces")
@click.option(
    "--adapter", "adapters_", multiple=True, help="Hash, prefix, name or name@version (repeatable)."
)
@click.option("--tenant", "tenants", multiple=True, help="Only this tenant (repeatable).")
@click.option("--deployment", "deployments", multiple=True, help="Only this deployment (repeatable).")
@click.option("--traffic", default=None, help="Only this traffic kind (production, eval, train).")
@click.option("--since", default=None, help="Only traces since: 7d, 24h, 30m or an ISO date.")
@click.option("--metric", default=None, help="Score filters look at this metric only.")
@click.option(
    "--min-score", type=float, default=None, help="Only traces whose lowest score is at least this."
)
@click.option("--max-score", type=float, default=None, help="Only traces with a score at or below this.")
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True)
@handle_errors
@source_options
@output_options
def traces_cmd(
    source: Any,
    fmt: str,
    adapters_: Sequence[str],
    tenants: Sequence[str],
    deployments: Sequence[str],
    traffic: str | None,
    since: str | None,
    metric: str | None,
    min_score: float | None,
    max_score: float | None,
    limit: int,
) -> None:
    """Recent traces with generations, newest first."""
    from trace_ptune.query.traces import traces

    rows = traces(
        source,
        adapter=list(adapters_),
        tenant=list(tenants),
        deployment=list(deployments),
        traffic=traffic,
        since=since,
        metric=metric,
        min_score=min_score,
        max_score=max_score,
        limit=limit,
    )
    if fmt == "table":
        shown = _with_adapter(rows)
        cols = [
            "trace_id",
            "start",
            "adapter",
            "tenant",
            "deployment",
            "traffic",
            "generations",
            "duration_ms",
            "min_score",
            "mean_score",
        ]
        emit(shown, fmt, columns=cols, title="Traces")
    else:
        emit(rows, fmt)


@query.command("trace")
@click.argument("trace_id")
@handle_errors
@source_options
@output_options
def trace_cmd(source: Any, fmt: str, trace_id: str) -> None:
    """One trace as a span tree (TRACE_ID: 32 hex digits or a unique prefix)."""
    from trace_ptune.query.traces import trace

    rows = trace(source, trace_id)
    if fmt != "table":
        emit(rows, fmt)
        return
    _print_tree(rows)


def _print_tree(rows: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.tree import Tree

    from trace_ptune import semconv
    from trace_ptune.query._common import short_hash

    root = Tree(f"[bold]trace {rows[0]['trace_id']}[/bold]")
    stack: list[tuple[int, Tree]] = [(-1, root)]
    shown_attrs = (
        semconv.PTUNE_TENANT,
        semconv.PTUNE_DEPLOYMENT,
        semconv.PTUNE_TRAFFIC,
        semconv.GEN_AI_USAGE_INPUT_TOKENS,
        semconv.GEN_AI_USAGE_OUTPUT_TOKENS,
        semconv.GEN_AI_RESPONSE_FINISH_REASONS,
        semconv.PTUNE_TRAIN_RUN_ID,
    )
    for r in rows:
        while stack and stack[-1][0] >= r["depth"]:
            stack.pop()
        style = "red" if r["status"] == "Error" else "green"
        label = f"[{style}]{escape(r['name'])}[/{style}] [dim]{r['duration_ms']:.1f} ms · {r['start']}[/dim]"
        if r["adapter_hash"]:
            label += f" [cyan]{escape(_adapter_label(r['adapter_name'], r['adapter_version'], r['adapter_hash']))}[/cyan]"
            label += f" [dim]{short_hash(r['adapter_hash'])}[/dim]"
        node = stack[-1][1].add(label)
        attrs = r["attributes"] if isinstance(r["attributes"], dict) else {}
        extra = [f"{k}={attrs[k]}" for k in shown_attrs if k in attrs]
        if extra:
            node.add(f"[dim]{escape(' '.join(str(e) for e in extra))}[/dim]")
        if r["status_message"]:
            node.add(f"[red]{escape(r['status_message'])}[/red]")
        for s in r["scores"]:
            value = "" if s["value"] is None else f"{s['value']:.3g}"
            node.add(f"[yellow]score {escape(s['metric'])} = {value}[/yellow] [dim]({s['source']})[/dim]")
        stack.append((r["depth"], node))
    Console(file=sys.stdout, width=160).print(root)


@query.command("sql")
@click.argument("statement")
@handle_errors
@source_options
@output_options
def sql_cmd(source: Any, fmt: str, statement: str) -> None:
    """Run one read-only SQL STATEMENT over spans, evaluations, adapters, metrics and logs."""
    from trace_ptune.query.traces import run_sql

    emit(run_sql(source, statement), fmt)


@query.command("compare")
@click.argument("a")
@click.argument("b")
@click.option("--metric", "metrics", multiple=True, help="Only this metric (repeatable).")
@click.option(
    "--alpha", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.01, show_default=True
)
@click.option(
    "--lower-is-better", "lower", multiple=True, metavar="METRIC", help="Metric where lower is better."
)
@handle_errors
@source_options
@output_options
def compare_cmd(
    source: Any, fmt: str, a: str, b: str, metrics: Sequence[str], alpha: float, lower: Sequence[str]
) -> None:
    """Adapter versions A (baseline) and B side by side on the traffic and evals they share."""
    from trace_ptune.query.compare import compare

    rows = compare(source, a, b, metric=list(metrics), alpha=alpha, lower_is_better=list(lower))
    if fmt == "table":
        shown = [
            {
                **r,
                "a": f"{r['mean_a']:.3f} (n={r['n_a']})",
                "b": f"{r['mean_b']:.3f} (n={r['n_b']})",
                "worst 10%": f"{r['worst_decile_a']:.3f} → {r['worst_decile_b']:.3f}",
                "ci": "" if r["ci_low"] is None else f"[{r['ci_low']:+.3f}, {r['ci_high']:+.3f}]",
            }
            for r in rows
        ]
        cols = ["traffic", "metric", "a", "b", "delta", "ci", "p_value", "worst 10%", "verdict"]
        emit(shown, fmt, columns=cols, title=f"{a} vs {b}")
    else:
        emit(rows, fmt)
    if not rows:
        click.echo(f"{a} and {b} share no scored traffic.", err=True)
