"""Read-only queries on the collector's database, for the HTTP query API and Postgres wire."""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import math
import uuid
from dataclasses import dataclass
from typing import Any

import duckdb

from trace_ptune.collector.sql_guard import check_read_only
from trace_ptune.errors import QueryError

# Rows one query may return through the API (protects the collector's memory).
MAX_ROWS = 1_000_000


@dataclass
class Result:
    columns: list[str]
    types: list[str]
    rows: list[tuple]


def execute(cursor: duckdb.DuckDBPyConnection, sql: str, params: list[Any] | None = None) -> Result:
    """Check ``sql`` with the read-only guard, run it on ``cursor`` and fetch the rows."""
    stmt = check_read_only(sql)
    try:
        cur = cursor.execute(stmt, params or None)
        description = cur.description or []
        rows = cur.fetchmany(MAX_ROWS + 1)
    except duckdb.Error as exc:
        raise _query_error(exc) from None
    if len(rows) > MAX_ROWS:
        raise QueryError(f"the query returns more than {MAX_ROWS} rows; add a LIMIT or aggregate")
    return Result([d[0] for d in description], [str(d[1]) for d in description], rows)


def execute_arrow(cursor: duckdb.DuckDBPyConnection, sql: str, params: list[Any] | None = None) -> Any:
    """Like :func:`execute` but returns a ``pyarrow.Table``."""
    stmt = check_read_only(sql)
    try:
        return cursor.sql(stmt, params=params or None).to_arrow_table()
    except duckdb.Error as exc:
        raise _query_error(exc) from None


def jsonable(value: Any) -> Any:
    """A DuckDB result value as plain JSON (timestamps as ISO 8601, decimals as floats)."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return None if math.isnan(value) or math.isinf(value) else value
    if isinstance(value, dt.datetime):
        if value.tzinfo is not None:
            value = value.astimezone(dt.UTC).replace(tzinfo=None)
        return value.isoformat() + "Z"
    if isinstance(value, dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return str(value)


def _query_error(exc: duckdb.Error) -> QueryError:
    err = QueryError(f"the query failed: {_first_line(exc)}")
    err.duckdb_error = type(exc).__name__  # type: ignore[attr-defined]  # for SQLSTATE mapping
    return err


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
