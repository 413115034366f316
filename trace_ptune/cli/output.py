"""Shared output options for every read command: a table (default), ``--json``, ``--nl``, ``--csv``.

Data goes to stdout, messages to stderr. ``--json`` prints one JSON array; ``--nl`` one JSON
object per line; ``--csv`` a header row then rows. Rows are plain dicts; their keys are the
contract (rows only ever gain fields).
"""

from __future__ import annotations

import csv
import datetime as _dt
import functools
import json
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

import click

from trace_ptune.errors import TracePtuneError

F = TypeVar("F", bound=Callable[..., Any])


def output_options(func: F) -> F:
    """Add ``--json``, ``--nl`` and ``--csv`` (mutually exclusive) as one ``fmt`` argument."""

    def _set(ctx: click.Context, param: click.Parameter, value: bool) -> None:
        if value:
            prev = ctx.meta.get("trace_ptune.fmt")
            if prev and prev != param.name:
                raise click.UsageError(f"--{prev} and --{param.name} cannot be used together; pick one.")
            ctx.meta["trace_ptune.fmt"] = param.name

    @click.option(
        "--json", "json_", is_flag=True, expose_value=False, callback=_set, help="Output a JSON array."
    )
    @click.option(
        "--nl", is_flag=True, expose_value=False, callback=_set, help="Output newline-delimited JSON."
    )
    @click.option("--csv", "csv_", is_flag=True, expose_value=False, callback=_set, help="Output CSV.")
    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        ctx = click.get_current_context()
        name = ctx.meta.get("trace_ptune.fmt")
        kwargs["fmt"] = {"json_": "json", "nl": "nl", "csv_": "csv"}.get(name or "", "table")
        return func(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def _jsonable(value: Any) -> Any:
    if isinstance(value, _dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=_dt.UTC)
        return value.isoformat().replace("+00:00", "Z")
    if isinstance(value, _dt.date):
        return value.isoformat()
    if isinstance(value, float) and value != value:  # NaN is not JSON
        return None
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    return value


def _cell(value: Any) -> str:
    value = _jsonable(value)
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict | list):
        return json.dumps(value, default=str)
    return str(value)


def emit(
    rows: Iterable[dict[str, Any]],
    fmt: str,
    columns: Sequence[str] | None = None,
    title: str | None = None,
) -> None:
    """Print rows in the chosen format. ``columns`` picks and orders the table's columns."""
    rows = [{k: _jsonable(v) for k, v in row.items()} for row in rows]
    out = sys.stdout
    if fmt == "json":
        out.write(json.dumps(rows, indent=2, default=str) + "\n")
        return
    if fmt == "nl":
        for row in rows:
            out.write(json.dumps(row, default=str) + "\n")
        return
    cols = list(columns) if columns else (list(rows[0].keys()) if rows else [])
    if fmt == "csv":
        writer = csv.writer(out)
        writer.writerow(cols)
        for row in rows:
            writer.writerow([_cell(row.get(c)) for c in cols])
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, show_lines=False)
    for c in cols:
        table.add_column(c, overflow="fold")
    for row in rows:
        table.add_row(*[_cell(row.get(c)) for c in cols])
    console = Console(file=out, width=max(160, Console().width))
    if not rows:
        click.echo("(no rows)", err=True)
        return
    console.print(table)


def emit_record(record: dict[str, Any], fmt: str, title: str | None = None) -> None:
    """One record: a field/value table, or a one-element JSON array / NDJSON line / CSV row."""
    if fmt == "table":
        emit(
            [{"field": k, "value": v} for k, v in record.items()],
            fmt,
            columns=("field", "value"),
            title=title,
        )
    else:
        emit([record], fmt)


def handle_errors(func: F) -> F:
    """Turn ``TracePtuneError`` into a one-sentence ``click.ClickException`` (exit 1, no traceback)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except TracePtuneError as exc:
            raise click.ClickException(str(exc)) from None

    return wrapper  # type: ignore[return-value]
