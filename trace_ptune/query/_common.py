"""Small shared pieces of the query layer: time parsing, time formatting, SQL literals."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Sequence
from typing import Any

from trace_ptune.errors import QueryError

_RELATIVE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)\s*$", re.IGNORECASE)
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_since(value: str | dt.datetime | None, *, now: dt.datetime | None = None) -> dt.datetime | None:
    """``7d``, ``24h``, ``30m``, ``2w``, ``90s`` (before now) or an ISO date/time (UTC if naive)."""
    if value is None or value == "":
        return None
    if isinstance(value, dt.datetime):
        return value if value.tzinfo else value.replace(tzinfo=dt.UTC)
    match = _RELATIVE.match(value)
    if match:
        seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2).lower()]
        return (now or dt.datetime.now(dt.UTC)) - dt.timedelta(seconds=seconds)
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        parsed = dt.datetime.fromisoformat(text)
    except ValueError:
        raise QueryError(
            f"Cannot read the time {value!r}; use a duration like 7d, 24h or 30m, or an ISO date like 2025-01-31."
        ) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def to_epoch_us(value: dt.datetime) -> int:
    """Microseconds since the Unix epoch (the database stores naive UTC timestamps)."""
    value = value if value.tzinfo else value.replace(tzinfo=dt.UTC)
    delta = value - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    return (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds


def iso_from_us(us: int | None) -> str | None:
    """ISO 8601 in UTC with a ``Z`` suffix, from epoch microseconds."""
    if us is None:
        return None
    value = dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(microseconds=int(us))
    return value.isoformat().replace("+00:00", "Z")


def sql_literal(value: Any) -> str:
    """A DuckDB literal for a str/int/float/None (used to inline small VALUES lists)."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    return "'" + str(value).replace("'", "''") + "'"


def values_cte(name: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """``name(c1, c2) AS (VALUES (...), ...)`` with inlined literals."""
    body = ",\n".join("(" + ", ".join(sql_literal(v) for v in row) + ")" for row in rows)
    return f"{name}({', '.join(columns)}) AS (VALUES {body})"


def as_list(value: str | Sequence[str] | None) -> list[str]:
    """``None`` -> [], one string -> [it], a sequence -> list (empties dropped)."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value] if value else []
    return [v for v in value if v]


def short_hash(value: str | None) -> str:
    """``sha256:0123456789ab`` (12 hex digits) for tables."""
    if not value:
        return ""
    algo, _, digest = value.partition(":")
    return f"{algo}:{digest[:12]}" if digest else value[:19]
