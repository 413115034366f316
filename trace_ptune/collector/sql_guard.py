"""Read-only SQL for users: one SELECT/EXPLAIN statement that cannot reach files or settings.

Used by the collector's query API and Postgres-wire endpoint, and by ``trace-ptune query`` when
it opens a database file itself. The statement is split with DuckDB's own parser
(``extract_statements``), its type checked, and its syntax tree (``json_serialize_sql``) walked
for table functions, scalar functions and replacement scans that read files or run other SQL.
"""

from __future__ import annotations

import json
import re
from typing import Any

import duckdb

from trace_ptune.errors import QueryError

# Functions that read files, list them, run SQL given as a string, or read the environment.
_DENIED_FUNCTIONS = frozenset(
    {
        "glob",
        "query",
        "query_table",
        "getenv",
        "sniff_csv",
        "json_execute_serialized_sql",
        "read_csv",
        "read_csv_auto",
        "read_parquet",
        "parquet_scan",
        "parquet_metadata",
        "parquet_schema",
        "parquet_file_metadata",
        "parquet_kv_metadata",
        "parquet_bloom_probe",
        "read_json",
        "read_json_auto",
        "read_json_objects",
        "read_json_objects_auto",
        "read_ndjson",
        "read_ndjson_auto",
        "read_ndjson_objects",
        "read_text",
        "read_blob",
        "read_xlsx",
        "iceberg_scan",
        "iceberg_metadata",
        "iceberg_snapshots",
        "delta_scan",
        "sqlite_scan",
        "sqlite_attach",
        "postgres_scan",
        "postgres_query",
        "mysql_query",
        "duckdb_secrets",
        "which_secret",
        "load_aws_credentials",
        "checkpoint",
        "force_checkpoint",
        "install_extension",
        "load_extension",
    }
)
_DENIED_PREFIXES = (
    "read_",
    "parquet_",
    "iceberg_",
    "delta_",
    "sqlite_",
    "postgres_",
    "mysql_",
    "json_execute",
)
_ALLOWED_TYPES = frozenset({duckdb.StatementType.SELECT, duckdb.StatementType.EXPLAIN})
_EXPLAIN = re.compile(r"^\s*explain\s+(analyze\s+)?", re.IGNORECASE)
# A table "name" that is really a file path or URL (DuckDB's replacement scans read those).
_FILEISH = re.compile(r"[./\\:*?]|^~")


def split(sql: str) -> list[Any]:
    """DuckDB's own statement split (raises ``QueryError`` on a syntax error)."""
    try:
        return duckdb.extract_statements(sql)
    except duckdb.Error as exc:
        raise QueryError(f"the SQL does not parse: {_first_line(exc)}") from None


def check_read_only(sql: str) -> str:
    """Return the single statement in ``sql`` if it is a safe read, else raise ``QueryError``.

    Allowed: one ``SELECT`` (including ``WITH ... SELECT``, ``FROM t``, ``VALUES``, ``DESCRIBE``,
    ``SHOW``, ``SUMMARIZE``) or ``EXPLAIN [ANALYZE]`` of one. Refused: several statements, any
    write or DDL, ``COPY``, ``ATTACH``, ``INSTALL``/``LOAD``, ``SET``, ``PRAGMA``, ``CALL``, and
    functions or table names that read files, run SQL strings or read the environment.
    """
    statements = split(sql)
    if not statements:
        raise QueryError("the SQL is empty; send one SELECT statement")
    if len(statements) > 1:
        raise QueryError(f"send one statement at a time, not {len(statements)}; split the SQL")
    stmt = statements[0]
    if stmt.type not in _ALLOWED_TYPES:
        kind = getattr(stmt.type, "name", str(stmt.type))
        raise QueryError(f"only SELECT and EXPLAIN are allowed here, not {kind}; the data is read-only")
    text = stmt.query if hasattr(stmt, "query") else sql
    inner = _EXPLAIN.sub("", text, count=1) if stmt.type == duckdb.StatementType.EXPLAIN else text
    _check_tree(inner)
    return text


def _check_tree(sql: str) -> None:
    con = duckdb.connect()
    try:
        raw = con.execute("SELECT json_serialize_sql(?)", [sql]).fetchone()[0]
    finally:
        con.close()
    tree = json.loads(raw)
    if tree.get("error"):
        raise QueryError(
            f"only a plain SELECT is allowed here: {tree.get('error_message', 'unsupported statement')}"
        )
    _walk(tree)


def _walk(node: Any) -> None:
    if isinstance(node, dict):
        fn = node.get("function_name")
        if isinstance(fn, str):
            _check_function(fn)
        ntype = node.get("type")
        if ntype == "BASE_TABLE":
            _check_table(node.get("table_name", ""))
        elif ntype == "SHOW_REF":
            name = node.get("table_name", "")
            if name and _FILEISH.search(name.strip('"')):
                raise QueryError(f"DESCRIBE/SHOW of {name!r} would read a file; name a table instead")
        for value in node.values():
            _walk(value)
    elif isinstance(node, list):
        for value in node:
            _walk(value)


def _check_function(name: str) -> None:
    low = name.lower()
    if low in _DENIED_FUNCTIONS or low.startswith(_DENIED_PREFIXES):
        raise QueryError(f"the function {name}() reads files or runs other SQL and is not allowed here")


def _check_table(name: str) -> None:
    if _FILEISH.search(name):
        raise QueryError(f"the table name {name!r} looks like a file path; file reads are not allowed here")


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
