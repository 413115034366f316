"""``trace-ptune collector``: run the OTLP collector, export, compact, status."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import click

from trace_ptune import paths, semconv
from trace_ptune.cli.output import emit, handle_errors, output_options
from trace_ptune.errors import ConfigError

_DB_HELP = "DuckDB file (default: $TRACE_PTUNE_HOME/traces.duckdb)."


def _read_secret(path: str | None, what: str) -> str | None:
    if not path:
        return None
    try:
        value = Path(path).expanduser().read_text().strip()
    except OSError as exc:
        raise ConfigError(f"cannot read the {what} file {path}: {exc.strerror}; check the path") from None
    if not value:
        raise ConfigError(f"the {what} file {path} is empty; put the {what} on its first line")
    return value


def _off(value: str | None) -> str | None:
    return None if value is None or value.strip().lower() in ("", "off", "none", "0") else value


@click.group("collector")
def collector() -> None:
    """Run the OTLP collector that stores traces, metrics and logs in DuckDB."""


@collector.command("run")
@click.option("--db", type=click.Path(dir_okay=False), default=None, help=_DB_HELP)
@click.option(
    "--http",
    default="127.0.0.1:4318",
    show_default=True,
    help="OTLP/HTTP and query API address ('off' to disable).",
)
@click.option(
    "--grpc",
    "grpc_addr",
    default="127.0.0.1:4317",
    show_default=True,
    help="OTLP/gRPC address ('off' to disable).",
)
@click.option(
    "--pg",
    default=None,
    is_flag=False,
    flag_value="127.0.0.1:5433",
    help="Serve read-only SQL over the Postgres wire protocol (bare --pg: 127.0.0.1:5433). Off by default.",
)
@click.option(
    "--token-file",
    type=click.Path(dir_okay=False),
    default=None,
    help="Require this bearer token (else $TRACE_PTUNE_TOKEN).",
)
@click.option(
    "--pg-password-file",
    type=click.Path(dir_okay=False),
    default=None,
    help="Password for the Postgres endpoint.",
)
@click.option("--retain", default=None, help="Delete data older than this (e.g. 30d, 12h); checked hourly.")
@click.option(
    "--workers",
    default="auto",
    show_default=True,
    help="Worker processes that parse and convert OTLP beside the writer (0: in the collector "
    "process; auto: one per core up to 4, none on one core).",
)
@click.option(
    "--db-threads",
    type=click.IntRange(0),
    default=1,
    show_default=True,
    help="DuckDB worker threads (0: one per core). One ingests fastest on small machines; more "
    "speed up large queries.",
)
@click.option(
    "--max-body-mb",
    type=float,
    default=32.0,
    show_default=True,
    help="Largest accepted request body (also decompressed).",
)
@click.option(
    "--max-queue-rows",
    type=int,
    default=200_000,
    show_default=True,
    help="Rows waiting for the writer before 429/UNAVAILABLE.",
)
@click.option(
    "--query-timeout",
    default="60s",
    show_default=True,
    help="Stop a query (query API or Postgres wire) that runs longer than this; 'off' for no limit.",
)
@click.option("--quiet", is_flag=True, help="Print nothing but errors.")
@handle_errors
def run(
    db: str | None,
    http: str,
    grpc_addr: str,
    pg: str | None,
    token_file: str | None,
    pg_password_file: str | None,
    retain: str | None,
    workers: str,
    db_threads: int,
    max_body_mb: float,
    max_queue_rows: int,
    query_timeout: str,
    quiet: bool,
) -> None:
    """Receive OTLP on loopback and store it; SIGTERM/Ctrl-C drains, checkpoints and exits 0."""
    from trace_ptune.collector.ingest import tune_allocator
    from trace_ptune.collector.server import Collector, CollectorConfig

    token = _read_secret(token_file, "token") or os.environ.get(semconv.ENV_TOKEN) or None
    cfg = CollectorConfig(
        db=db,
        http=_off(http),
        grpc=_off(grpc_addr),
        pg=_off(pg),
        token=token,
        pg_password=_read_secret(pg_password_file, "password"),
        retain=retain,
        max_body_bytes=int(max_body_mb * 1024 * 1024),
        max_queue_rows=max_queue_rows,
        workers=_workers(workers),
        db_threads=db_threads,
        query_timeout=_query_timeout(query_timeout),
        quiet=quiet,
    )
    tune_allocator()  # this process is the collector: keep freed blocks for the next commit

    def started(coll: Collector) -> None:
        if not quiet:
            urls = "  ".join(f"{k}={v}" for k, v in coll.urls.items())
            click.echo(f"collector on {coll.db}: {urls}{'  (token required)' if token else ''}", err=True)

    Collector(cfg).run(on_start=started, exiting=True)
    if not quiet:
        click.echo("collector stopped cleanly", err=True)


def _query_timeout(value: str) -> float | None:
    """``--query-timeout``: a duration (``60s``, ``5m``; a bare number is seconds) or ``off``."""
    from trace_ptune.collector.server import parse_duration

    text = value.strip().lower()
    if text in ("off", "none"):
        return None
    try:
        seconds = float(text)
    except ValueError:
        try:
            seconds = parse_duration(text)
        except ConfigError:
            seconds = -1.0
    if seconds == 0:  # "0", "0s": no limit, as PostgreSQL reads statement_timeout = 0
        return None
    if not 0 < seconds < float("inf"):
        raise click.BadParameter(
            f"{value!r} is not a time limit; pass e.g. 60s, 5m or off.", param_hint="--query-timeout"
        )
    return seconds


def _workers(value: str) -> int:
    """``--workers``: a count, or ``auto`` (one per usable core up to 4; none on a single core)."""
    if value.strip().lower() == "auto":
        from trace_ptune.collector.ingest import auto_workers

        return auto_workers()
    try:
        n = int(value)
    except ValueError:
        n = -1
    if n < 0:
        raise click.BadParameter(
            f"{value!r} is not a worker count; pass 0 or more, or auto.", param_hint="--workers"
        )
    return n


def _target(db: str | None, url: str | None, token: str | None) -> tuple[Path, Any, dict[str, Any] | None]:
    """(database path, client of its running collector or None, that collector's side file or None)."""
    from trace_ptune.collector.client import CollectorClient

    path = Path(db).expanduser() if db else paths.default_db()
    token = token or os.environ.get(semconv.ENV_TOKEN) or None
    info = paths.live_collector(path)
    if url:
        return path, CollectorClient(url, token), info
    if info and info.get("urls", {}).get("http"):
        return path, CollectorClient(info["urls"]["http"], token), info
    return path, None, info


_CLIENT_OPTIONS = [
    click.option("--db", type=click.Path(dir_okay=False), default=None, help=_DB_HELP),
    click.option(
        "--collector",
        "url",
        default=None,
        help="URL of a running collector (default: found via the side file).",
    ),
    click.option("--token", default=None, help="Bearer token of the collector (else $TRACE_PTUNE_TOKEN)."),
]


def _client_options(func: Any) -> Any:
    for opt in reversed(_CLIENT_OPTIONS):
        func = opt(func)
    return func


@collector.command("export")
@click.option(
    "--parquet", "directory", required=True, type=click.Path(file_okay=False), help="Output directory."
)
@_client_options
@output_options
@handle_errors
def export(directory: str, db: str | None, url: str | None, token: str | None, fmt: str) -> None:
    """Export every table as Parquet, partitioned by day (DIR/<table>/day=YYYY-MM-DD/)."""
    from trace_ptune.collector.store import connect, export_parquet

    path, client, _ = _target(db, url, token)
    out = str(Path(directory).expanduser().resolve())
    if client is not None:
        counts = client.export_parquet(out)["rows"]
    else:
        if not path.exists():
            raise ConfigError(f"no database at {path}; pass --db with an existing file")
        with connect(path, read_only=True) as con:
            counts = export_parquet(con, out)
    emit(
        [{"table": k, "rows": v, "dir": out} for k, v in counts.items()],
        fmt,
        columns=["table", "rows", "dir"],
    )


@collector.command("compact")
@_client_options
@output_options
@handle_errors
def compact(db: str | None, url: str | None, token: str | None, fmt: str) -> None:
    """Reclaim space after deletes: copy the database into a fresh file and swap it in."""
    from trace_ptune.collector.store import compact_offline

    path, client, _ = _target(db, url, token)
    if client is not None:
        res = client.compact()
        before, after = res["bytes_before"], res["bytes_after"]
    else:
        before, after = compact_offline(path)
    emit([{"db": str(path), "bytes_before": before, "bytes_after": after}], fmt)


@collector.command("status")
@_client_options
@output_options
@handle_errors
def status(db: str | None, url: str | None, token: str | None, fmt: str) -> None:
    """Show whether a collector runs on the database, its URLs and row counts."""
    path, client, info = _target(db, url, token)
    tables = [
        semconv.TABLE_SPANS,
        semconv.TABLE_EVALUATIONS,
        semconv.TABLE_ADAPTERS,
        semconv.TABLE_METRICS,
        semconv.TABLE_LOGS,
    ]
    sql = "SELECT " + ", ".join(f"(SELECT count(*) FROM {t}) AS {t}" for t in tables)
    row: dict[str, Any] = {"db": str(path), "running": client is not None}
    if info:
        row.update({"pid": info.get("pid"), "started_at": info.get("started_at"), **info.get("urls", {})})
    if client is not None:
        cols, rows = client.query(sql)
        row.update(dict(zip(cols, rows[0], strict=True)))
    elif path.exists():
        import duckdb

        from trace_ptune.collector.store import connect

        with connect(path, read_only=True) as con:
            try:
                counts = con.execute(sql).fetchone()
            except duckdb.Error:  # a database without the collector's tables
                counts = None
        if counts:
            row.update(dict(zip(tables, counts, strict=True)))
    else:
        click.echo(f"no database at {path} yet", err=True)
    emit([row], fmt)


if __name__ == "__main__":  # pragma: no cover
    collector(sys.argv[1:])
