"""Every adapter hash seen, and resolution of a user's adapter reference to hashes.

A reference is a full hash (``sha256:<hex>``), a hash prefix of at least 12 hex digits (with or
without ``sha256:``), ``name@version``, or a name (all its versions).
"""

from __future__ import annotations

import json
import re
from typing import Any

from trace_ptune import semconv
from trace_ptune.errors import QueryError
from trace_ptune.query._common import iso_from_us
from trace_ptune.query.source import Source

_HEX = re.compile(r"^(?:sha256:)?([0-9a-f]{12,64})$")

_KNOWN_SQL = f"""
    SELECT adapter_hash, adapter_name, adapter_version FROM {semconv.TABLE_ADAPTERS}
    UNION
    SELECT adapter_hash, any_value(adapter_name), max(adapter_version) FROM {semconv.TABLE_SPANS}
    WHERE adapter_hash IS NOT NULL AND adapter_hash LIKE ? GROUP BY adapter_hash
"""


def resolve_adapter(source: Source, ref: str) -> list[dict[str, Any]]:
    """Adapters (``adapter_hash``, ``adapter_name``, ``adapter_version``) matching ``ref``.

    Raises ``QueryError`` when nothing matches. A name gives every version, oldest first.
    """
    ref = ref.strip()
    hex_match = _HEX.match(ref.lower())
    if hex_match:
        sql = f"SELECT * FROM ({_KNOWN_SQL}) WHERE adapter_hash LIKE ?"
        pattern = f"sha256:{hex_match.group(1)}%"
        params: list[Any] = [pattern, pattern]
    elif "@" in ref:
        name, _, version = ref.rpartition("@")
        if not version.isdigit():
            raise QueryError(
                f"Cannot read the adapter version in {ref!r}; write name@VERSION, e.g. support@2."
            )
        sql = f"SELECT * FROM ({_KNOWN_SQL}) WHERE adapter_name = ? AND adapter_version = ?"
        params = ["%", name, int(version)]
    else:
        sql = f"SELECT * FROM ({_KNOWN_SQL}) WHERE adapter_name = ?"
        params = ["%", ref]
    found: dict[str, dict[str, Any]] = {}
    for h, name, version in source.query(sql, params)[1]:
        row = found.setdefault(h, {"adapter_hash": h, "adapter_name": name, "adapter_version": version})
        row["adapter_name"] = row["adapter_name"] or name
        row["adapter_version"] = row["adapter_version"] if row["adapter_version"] is not None else version
    if not found:
        raise QueryError(
            f"No adapter matches {ref!r} in {source.location}; list them with `trace-ptune query adapters`."
        )
    return sorted(
        found.values(), key=lambda r: (r["adapter_name"] or "", r["adapter_version"] or 0, r["adapter_hash"])
    )


def resolve_one(source: Source, ref: str) -> dict[str, Any]:
    """Exactly one adapter: a name resolves to its latest version; an ambiguous prefix is an error."""
    matches = resolve_adapter(source, ref)
    if len(matches) == 1:
        return matches[0]
    names = {m["adapter_name"] for m in matches}
    if not _HEX.match(ref.lower()) and len(names) == 1:
        return max(matches, key=lambda m: m["adapter_version"] or 0)
    raise QueryError(
        f"The adapter reference {ref!r} matches {len(matches)} adapters; give more hash digits or name@version."
    )


def adapters(source: Source, *, name: str | None = None) -> list[dict[str, Any]]:
    """One row per adapter hash: identity, base model, first/last seen, requests, score means."""
    where = "WHERE adapter_hash IS NOT NULL"
    params: list[Any] = []
    if name:
        where += " AND adapter_name = ?"
        params.append(name)
    sql = f"""
    WITH seen AS (
        SELECT adapter_hash,
               any_value(adapter_name) AS adapter_name,
               max(adapter_version) AS adapter_version,
               any_value(base_model_name) AS base_model_name,
               any_value(base_fingerprint) AS base_fingerprint,
               epoch_us(min(Timestamp)) AS first_seen,
               epoch_us(max(Timestamp)) AS last_seen,
               count(*) FILTER (WHERE operation IS NOT NULL) AS requests,
               count(*) FILTER (WHERE operation IS NOT NULL
                                AND coalesce(traffic, '{semconv.TRAFFIC_PRODUCTION}') = '{semconv.TRAFFIC_PRODUCTION}')
                   AS production_requests
        FROM {semconv.TABLE_SPANS} {where} GROUP BY adapter_hash
    ),
    known AS (SELECT * FROM {semconv.TABLE_ADAPTERS} {where})
    SELECT coalesce(k.adapter_hash, s.adapter_hash) AS adapter_hash,
           coalesce(k.adapter_name, s.adapter_name) AS adapter_name,
           coalesce(k.adapter_version, s.adapter_version) AS adapter_version,
           k.parent_hash, k.method, k.num_virtual_tokens,
           coalesce(k.base_model_name, s.base_model_name) AS base_model_name,
           coalesce(k.base_fingerprint, s.base_fingerprint) AS base_fingerprint,
           least(epoch_us(k.first_seen), s.first_seen) AS first_seen,
           greatest(epoch_us(k.last_seen), s.last_seen) AS last_seen,
           coalesce(s.requests, 0)::BIGINT AS requests,
           coalesce(s.production_requests, 0)::BIGINT AS production_requests
    FROM known k FULL OUTER JOIN seen s ON k.adapter_hash = s.adapter_hash
    ORDER BY adapter_name NULLS LAST, adapter_version NULLS LAST, adapter_hash
    """
    rows = source.dicts(sql, params * 2)
    scores = _score_means(source, [r["adapter_hash"] for r in rows])
    for r in rows:
        r["first_seen"] = iso_from_us(r["first_seen"])
        r["last_seen"] = iso_from_us(r["last_seen"])
        r["scores"] = scores.get(r["adapter_hash"], {})
    return rows


def _score_means(source: Source, hashes: list[str]) -> dict[str, dict[str, float]]:
    """Mean score per metric over each adapter's evaluations (all traffic kinds)."""
    if not hashes:
        return {}
    sql = f"""
    SELECT adapter_hash, name, avg(score_value) AS mean
    FROM {semconv.TABLE_EVALUATIONS}
    WHERE adapter_hash IS NOT NULL AND score_value IS NOT NULL
    GROUP BY adapter_hash, name ORDER BY name
    """
    out: dict[str, dict[str, float]] = {}
    wanted = set(hashes)
    for h, metric, mean in source.query(sql)[1]:
        if h in wanted:
            out.setdefault(h, {})[metric] = float(mean)
    return out


def json_value(value: Any) -> Any:
    """JSON columns arrive as text from DuckDB and from the query API: parse them."""
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value
