"""Read-only queries on the collector's database, for the HTTP query API and Postgres wire."""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import decimal
import math
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import duckdb

from trace_ptune.collector.sql_guard import check_read_only
from trace_ptune.errors import QueryError

# Rows one query may return through the API (protects the collector's memory).
MAX_ROWS = 1_000_000
# How long one query may run by default (``--query-timeout``): a runaway query would hold a CPU
# core beside the writer and keep compaction (which waits for readers) from ever starting.
DEFAULT_TIMEOUT_S = 60.0


class Interrupt:
    """Stops the query running on a cursor: after ``timeout`` seconds, or when :meth:`cancel`
    is called from another thread (a Postgres CancelRequest). ``None`` or 0: no time limit."""

    def __init__(self, timeout: float | None = None) -> None:
        self.timeout = timeout or None
        self._lock = threading.Lock()
        self._cursor: duckdb.DuckDBPyConnection | None = None
        self._reason: str | None = None
        self.stopped: str | None = None  # why the last query was stopped: timeout, cancel, shutdown

    @contextlib.contextmanager
    def running(self, cursor: duckdb.DuckDBPyConnection) -> Iterator[None]:
        with self._lock:
            self._cursor, self._reason, self.stopped = cursor, None, None
        timer = None
        if self.timeout:
            timer = threading.Timer(min(self.timeout, threading.TIMEOUT_MAX), self._stop, ("timeout",))
            timer.daemon = True
            timer.start()
        try:
            yield
        finally:
            if timer is not None:
                timer.cancel()
            with self._lock:
                self._cursor = None

    @contextlib.contextmanager
    def guard(self, cursor: duckdb.DuckDBPyConnection) -> Iterator[None]:
        """:meth:`running`, with DuckDB's errors turned into one-sentence ``QueryError``s."""
        try:
            with self.running(cursor):
                yield
        except duckdb.InterruptException:
            self.stopped = self._reason or "shutdown"
            raise self.error() from None
        except duckdb.Error as exc:
            raise _query_error(exc) from None

    def cancel(self) -> bool:
        """Stop the running query, if any; True when one was running."""
        return self._stop("cancel")

    def _stop(self, reason: str) -> bool:
        with self._lock:
            if self._cursor is None:
                return False
            self._reason = reason
            self._cursor.interrupt()
            return True

    def error(self) -> QueryError:
        """The error for a query that DuckDB reported as interrupted."""
        if self._reason == "timeout":
            err = QueryError(
                f"canceling statement due to statement timeout after {self.timeout:g} s; narrow the query "
                "with a time range, a LIMIT or an aggregate, or raise the collector's --query-timeout"
            )
        elif self._reason == "cancel":
            err = QueryError("canceling statement due to user request")
        else:  # interrupted from outside: the collector is stopping
            err = QueryError(
                "canceling statement: the collector is shutting down; run the query again once it is back"
            )
        err.duckdb_error = "InterruptException"  # type: ignore[attr-defined]  # SQLSTATE 57014
        return err


@dataclass
class Result:
    columns: list[str]
    types: list[str]
    rows: list[tuple]


def execute(
    cursor: duckdb.DuckDBPyConnection,
    sql: str,
    params: list[Any] | None = None,
    interrupt: Interrupt | None = None,
) -> Result:
    """Check ``sql`` with the read-only guard, run it on ``cursor`` and fetch the rows."""
    stmt = check_read_only(sql)
    with (interrupt or Interrupt()).guard(cursor):
        cur = cursor.execute(stmt, params or None)
        description = cur.description or []
        rows = cur.fetchmany(MAX_ROWS + 1)
    if len(rows) > MAX_ROWS:
        raise QueryError(f"the query returns more than {MAX_ROWS} rows; add a LIMIT or aggregate")
    return Result([d[0] for d in description], [str(d[1]) for d in description], rows)


def execute_arrow(
    cursor: duckdb.DuckDBPyConnection,
    sql: str,
    params: list[Any] | None = None,
    interrupt: Interrupt | None = None,
) -> Any:
    """Like :func:`execute` but returns a ``pyarrow.Table``."""
    stmt = check_read_only(sql)
    with (interrupt or Interrupt()).guard(cursor):
        return cursor.sql(stmt, params=params or None).to_arrow_table()


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
