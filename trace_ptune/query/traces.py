"""Trace listings (``query traces``), one trace's span tree (``query trace``) and read-only SQL."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Sequence
from typing import Any

from trace_ptune import semconv
from trace_ptune.errors import QueryError
from trace_ptune.query._common import as_list, iso_from_us, parse_since, to_epoch_us
from trace_ptune.query.adapters import json_value, resolve_adapter
from trace_ptune.query.source import Source

_TRACE_ID = re.compile(r"^[0-9a-f]{4,32}$")


def traces(
    source: Source,
    *,
    adapter: str | Sequence[str] | None = None,
    tenant: str | Sequence[str] | None = None,
    deployment: str | Sequence[str] | None = None,
    traffic: str | None = None,
    since: str | dt.datetime | None = None,
    metric: str | None = None,
    min_score: float | None = None,
    max_score: float | None = None,
    limit: int = 50,
) -> list[dict[str, Any]]:
    """Recent traces with generations, newest first.

    Score filters apply to each trace's lowest score (of ``metric`` when given):
    ``max_score=0.3`` finds traces with a score at or below 0.3, ``min_score=0.9`` traces whose
    every score is at least 0.9. Traces without scores pass only when no score filter is set.
    """
    if limit < 1:
        raise QueryError(f"The limit must be at least 1, got {limit}; pass --limit 50 for example.")
    where = ["operation IS NOT NULL"]
    params: list[Any] = []
    hashes = [m["adapter_hash"] for ref in as_list(adapter) for m in resolve_adapter(source, ref)]
    for column, values in (
        ("adapter_hash", hashes),
        ("tenant", as_list(tenant)),
        ("deployment", as_list(deployment)),
    ):
        if values:
            where.append(f"{column} IN ({', '.join('?' for _ in values)})")
            params += values
    if traffic:
        where.append(f"coalesce(traffic, '{semconv.TRAFFIC_PRODUCTION}') = ?")
        params.append(traffic)
    since_dt = parse_since(since)
    if since_dt is not None:
        where.append("Timestamp >= make_timestamp(?::BIGINT)")
        params.append(to_epoch_us(since_dt))
    score_where = "score_value IS NOT NULL"
    score_params: list[Any] = []
    if metric:
        score_where += " AND name = ?"
        score_params.append(metric)
    having = []
    if min_score is not None:
        having.append("min(score_value) >= ?")
    if max_score is not None:
        having.append("min(score_value) <= ?")
    filter_params = [v for v in (min_score, max_score) if v is not None]
    if having:
        # score filters first: they look at the (smaller) evaluations table
        window = None
        cand = f"""SELECT TraceId FROM {semconv.TABLE_EVALUATIONS} WHERE {score_where}
                   GROUP BY TraceId HAVING {" AND ".join(having)}"""
        cand_params = [*score_params, *filter_params]
    else:
        # the newest generation spans name the candidate traces: no full GROUP BY over all spans
        window = int(limit) * 50
        cand = (
            f"SELECT DISTINCT TraceId FROM (SELECT TraceId FROM gen ORDER BY Timestamp DESC LIMIT {window})"
        )
        cand_params = []
    rows = source.dicts(_traces_sql(where, cand, score_where, limit), [*params, *cand_params, *score_params])
    if window is not None and len(rows) < limit:  # traces with many generations: aggregate them all
        cand = "SELECT DISTINCT TraceId FROM gen"
        rows = source.dicts(_traces_sql(where, cand, score_where, limit), [*params, *score_params])
    out = []
    for r in rows:
        out.append(
            {
                "trace_id": r["TraceId"],
                "start": iso_from_us(r["start"]),
                "adapter_hash": r["adapter_hash"],
                "adapter_name": r["adapter_name"],
                "adapter_version": r["adapter_version"],
                "tenant": r["tenant"],
                "deployment": r["deployment"],
                "traffic": r["traffic"],
                "generations": int(r["generations"]),
                "duration_ms": (r["duration_ns"] or 0) / 1e6,
                "error": bool(r["error"]),
                "min_score": r["min_score"],
                "mean_score": r["mean_score"],
                "scores": int(r["scores"]),
            }
        )
    return out


def _traces_sql(where: list[str], cand: str, score_where: str, limit: int) -> str:
    return f"""
    WITH gen AS NOT MATERIALIZED (
        SELECT TraceId, Timestamp, Duration, StatusCode, adapter_hash, adapter_name, adapter_version,
               tenant, deployment, coalesce(traffic, '{semconv.TRAFFIC_PRODUCTION}') AS traffic
        FROM {semconv.TABLE_SPANS} WHERE {" AND ".join(where)}
    ),
    cand AS ({cand}),
    t AS (
        SELECT TraceId, epoch_us(min(Timestamp)) AS start, epoch_us(max(Timestamp)) AS last,
               count(*) AS generations, max(Duration) AS duration_ns, bool_or(StatusCode = 'Error') AS error,
               any_value(adapter_hash) AS adapter_hash, any_value(adapter_name) AS adapter_name,
               any_value(adapter_version) AS adapter_version, any_value(tenant) AS tenant,
               any_value(deployment) AS deployment, any_value(traffic) AS traffic
        FROM gen WHERE TraceId IN (SELECT TraceId FROM cand) GROUP BY TraceId
    ),
    sc AS (
        SELECT TraceId, min(score_value) AS min_score, avg(score_value) AS mean_score, count(*) AS scores
        FROM {semconv.TABLE_EVALUATIONS}
        WHERE {score_where} AND TraceId IN (SELECT TraceId FROM t)
        GROUP BY TraceId
    )
    SELECT t.*, sc.min_score, sc.mean_score, coalesce(sc.scores, 0) AS scores
    FROM t LEFT JOIN sc USING (TraceId)
    ORDER BY t.last DESC, t.TraceId
    LIMIT {int(limit)}
    """


def trace(source: Source, trace_id: str) -> list[dict[str, Any]]:
    """Every span of one trace (depth-first, children by start time) with its scores.

    ``trace_id`` may be a unique prefix of at least 4 hex digits.
    """
    tid = trace_id.strip().lower()
    if not _TRACE_ID.match(tid):
        raise QueryError(f"{trace_id!r} is not a trace id; pass the 32 hex digits (or a unique prefix).")
    if len(tid) < 32:
        ids = [
            r[0]
            for r in source.query(
                f"SELECT DISTINCT TraceId FROM {semconv.TABLE_SPANS} WHERE TraceId LIKE ? LIMIT 2",
                [tid + "%"],
            )[1]
        ]
        if len(ids) > 1:
            raise QueryError(f"The trace id prefix {trace_id!r} matches several traces; give more digits.")
        tid = ids[0] if ids else tid
    spans = source.dicts(
        f"""SELECT SpanId, ParentSpanId, SpanName, SpanKind, ServiceName, epoch_us(Timestamp) AS t, Duration,
                   StatusCode, StatusMessage, SpanAttributes, Events, adapter_hash, adapter_name,
                   adapter_version, tenant, deployment, traffic
            FROM {semconv.TABLE_SPANS} WHERE TraceId = ? ORDER BY Timestamp, SpanId""",
        [tid],
    )
    if not spans:
        raise QueryError(
            f"No trace {trace_id!r} in {source.location}; list traces with `trace-ptune query traces`."
        )
    scores: dict[str, list[dict[str, Any]]] = {}
    for e in source.dicts(
        f"""SELECT SpanId, name, score_value, score_label, explanation, source, epoch_us(Timestamp) AS t
            FROM {semconv.TABLE_EVALUATIONS} WHERE TraceId = ? ORDER BY Timestamp, name""",
        [tid],
    ):
        scores.setdefault(e["SpanId"] or "", []).append(
            {
                "metric": e["name"],
                "value": e["score_value"],
                "label": e["score_label"],
                "explanation": e["explanation"],
                "source": e["source"],
                "time": iso_from_us(e["t"]),
            }
        )
    ids = {s["SpanId"] for s in spans}
    children: dict[str, list[dict[str, Any]]] = {}
    for s in spans:
        parent = s["ParentSpanId"] or ""
        children.setdefault(parent if parent in ids else "", []).append(s)
    out: list[dict[str, Any]] = []

    def walk(parent: str, depth: int) -> None:
        for s in children.get(parent, []):
            out.append(
                {
                    "trace_id": tid,
                    "span_id": s["SpanId"],
                    "parent_span_id": s["ParentSpanId"] or None,
                    "depth": depth,
                    "name": s["SpanName"],
                    "kind": s["SpanKind"],
                    "service": s["ServiceName"],
                    "start": iso_from_us(s["t"]),
                    "duration_ms": (s["Duration"] or 0) / 1e6,
                    "status": s["StatusCode"],
                    "status_message": s["StatusMessage"] or None,
                    "adapter_hash": s["adapter_hash"],
                    "adapter_name": s["adapter_name"],
                    "adapter_version": s["adapter_version"],
                    "tenant": s["tenant"],
                    "deployment": s["deployment"],
                    "traffic": s["traffic"],
                    "attributes": json_value(s["SpanAttributes"]) or {},
                    "events": json_value(s["Events"]) or [],
                    "scores": scores.get(s["SpanId"], []),
                }
            )
            walk(s["SpanId"], depth + 1)

    walk("", 0)
    return out


def check_read_only(sql: str) -> None:
    """Refuse anything but one read-only statement (the collector's guard when installed)."""
    try:
        from trace_ptune.collector.sql_guard import check_read_only as guard
    except ImportError:
        guard = None
    if guard is not None:
        try:
            guard(sql)
        except QueryError:
            raise
        except Exception as exc:  # the guard's own error type: re-raise as ours, one sentence
            raise QueryError(str(exc)) from None
        return
    import duckdb

    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as exc:
        raise QueryError(f"The SQL does not parse: {str(exc).splitlines()[0]}.") from None
    if len(statements) != 1:
        raise QueryError(f"Pass exactly one SQL statement, got {len(statements)}.")
    allowed = {duckdb.StatementType.SELECT, duckdb.StatementType.EXPLAIN}
    if statements[0].type not in allowed:
        kind = statements[0].type.name
        raise QueryError(f"Only read-only SELECT queries are allowed, got a {kind} statement.")


def run_sql(source: Source, sql: str) -> list[dict[str, Any]]:
    """Run one read-only statement and return its rows as dicts."""
    if not sql.strip():
        raise QueryError("The SQL is empty; pass a SELECT statement.")
    check_read_only(sql)
    return source.dicts(sql)
