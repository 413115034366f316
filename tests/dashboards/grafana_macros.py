"""Expand Grafana's PostgreSQL-data-source macros and template variables the way Grafana does.

Grafana rewrites a raw SQL panel before sending it: ``$__timeFilter(col)`` becomes
``col BETWEEN '<from>' AND '<to>'`` (RFC 3339, UTC), ``$__timeGroupAlias(col, '5m')`` becomes
``floor(extract(epoch from col)/300)*300 AS "time"``, and so on; ``${var:sqlstring}`` becomes a
quoted, comma-separated list. The panels are checked with the SQL Grafana would really send.
"""

from __future__ import annotations

import datetime as dt
import re

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def _interval_seconds(text: str) -> int:
    text = text.strip().strip("'\"")
    match = re.fullmatch(r"(\d+)([smhdw])", text)
    if not match:
        raise ValueError(f"unsupported Grafana interval {text!r}")
    return int(match.group(1)) * _UNITS[match.group(2)]


def _args(text: str) -> list[str]:
    return [a.strip() for a in text.split(",")]


def _rfc3339(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def expand(sql: str, start: dt.datetime, end: dt.datetime, variables: dict[str, list[str]]) -> str:
    """Return ``sql`` as Grafana's PostgreSQL data source would send it."""

    def repl(match: re.Match[str]) -> str:
        name, raw = match.group(1), match.group(2)
        args = _args(raw) if raw.strip() else []
        if name == "timeFilter":
            return f"{args[0]} BETWEEN '{_rfc3339(start)}' AND '{_rfc3339(end)}'"
        if name == "timeFrom":
            return f"'{_rfc3339(start)}'"
        if name == "timeTo":
            return f"'{_rfc3339(end)}'"
        if name == "time":
            return f'{args[0]} AS "time"'
        if name == "timeEpoch":
            return f'extract(epoch from {args[0]}) AS "time"'
        if name in ("timeGroup", "timeGroupAlias"):
            seconds = _interval_seconds(args[1])
            expr = f"floor(extract(epoch from {args[0]})/{seconds})*{seconds}"
            return expr + (' AS "time"' if name == "timeGroupAlias" else "")
        if name == "unixEpochFilter":
            return f"{args[0]} >= {int(start.timestamp())} AND {args[0]} <= {int(end.timestamp())}"
        raise ValueError(f"macro $__{name} is not expanded by this checker")

    sql = re.sub(r"\$__(\w+)\(([^()]*)\)", repl, sql)

    def var(match: re.Match[str]) -> str:
        name, fmt = match.group(1), match.group(2)
        values = variables[name]
        if fmt in ("sqlstring", None):
            return ",".join("'" + v.replace("'", "''") + "'" for v in values)
        raise ValueError(f"variable format {fmt!r} is not expanded by this checker")

    return re.sub(r"\$\{(\w+)(?::(\w+))?\}", var, sql)
