"""A read-only PostgreSQL wire-protocol endpoint over the collector's database.

Grafana's PostgreSQL data source, ``psql`` and ``psycopg`` connect to it like to a PostgreSQL 16
server: SSL and GSS encryption requests are refused (clients fall back to plain TCP on
loopback), cleartext password authentication when a password is configured, the simple query
protocol and the extended one (Parse/Bind/Describe/Execute/Sync/Close/Flush) with text
parameters and text or binary results, PostgreSQL type OIDs, and ``ErrorResponse`` with
SQLSTATE codes. Statements pass the same read-only guard as the HTTP query API; ``BEGIN``,
``COMMIT``, ``ROLLBACK``, ``SET``, ``RESET``, ``DISCARD`` and ``DEALLOCATE`` are acknowledged
without effect, ``SHOW`` answers a few settings, and ``version()`` reports
``PostgreSQL 16.x (trace-ptune ...)``.
"""

from __future__ import annotations

import datetime as dt
import decimal
import hmac
import json
import logging
import os
import re
import secrets
import socketserver
import struct
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import duckdb

from trace_ptune import __version__
from trace_ptune.collector import reads
from trace_ptune.collector.sql_guard import check_read_only
from trace_ptune.collector.store import Store
from trace_ptune.errors import QueryError

log = logging.getLogger(__name__)

SERVER_VERSION = "16.4"
VERSION_STRING = f"PostgreSQL {SERVER_VERSION} (trace-ptune {__version__}, DuckDB {duckdb.__version__}) on x86_64, read-only"

_SSL_REQUEST, _GSS_REQUEST, _CANCEL_REQUEST, _PROTOCOL_3 = 80877103, 80877104, 80877102, 196608
_EPOCH_2000 = dt.datetime(2000, 1, 1)
_DATE_2000 = dt.date(2000, 1, 1)

# (oid, typlen) per DuckDB type name (the part before any parenthesis).
_TYPES: dict[str, tuple[int, int]] = {
    "BOOLEAN": (16, 1),
    "TINYINT": (21, 2),
    "SMALLINT": (21, 2),
    "UTINYINT": (21, 2),
    "INTEGER": (23, 4),
    "USMALLINT": (23, 4),
    "BIGINT": (20, 8),
    "UINTEGER": (20, 8),
    "UBIGINT": (1700, -1),
    "HUGEINT": (1700, -1),
    "UHUGEINT": (1700, -1),
    "FLOAT": (700, 4),
    "DOUBLE": (701, 8),
    "DECIMAL": (1700, -1),
    "VARCHAR": (25, -1),
    "JSON": (114, -1),
    "BLOB": (17, -1),
    "DATE": (1082, 4),
    "TIME": (1083, 8),
    "TIMESTAMP": (1114, 8),
    "TIMESTAMP_NS": (1114, 8),
    "TIMESTAMP_MS": (1114, 8),
    "TIMESTAMP_S": (1114, 8),
    "TIMESTAMP WITH TIME ZONE": (1184, 8),
    "INTERVAL": (1186, 16),
    "UUID": (2950, 16),
}
_JSONISH = re.compile(r"(\[\]|\[\d+\]$|^STRUCT|^MAP|^UNION)")

_SETTINGS = {
    "server_version": SERVER_VERSION,
    "server_version_num": SERVER_VERSION.replace(".", "00") + "",
    "server_encoding": "UTF8",
    "client_encoding": "UTF8",
    "datestyle": "ISO, MDY",
    "timezone": "UTC",
    "integer_datetimes": "on",
    "standard_conforming_strings": "on",
    "transaction_isolation": "read committed",
    "default_transaction_read_only": "on",
    "transaction_read_only": "on",
    "max_identifier_length": "63",
    "search_path": "main",
    "intervalstyle": "postgres",
    "is_superuser": "off",
}

# SET/RESET statement_timeout are honoured per session (below the collector's --query-timeout).
_STATEMENT_TIMEOUT = re.compile(
    r"^\s*(?:set\s+(?:session\s+)?statement_timeout\s*(?:=|\s+to\s+)\s*(?P<value>[^;]+?)"
    r"|reset\s+statement_timeout)\s*;?\s*$",
    re.IGNORECASE,
)
_TIMEOUT_VALUE = re.compile(r"^(\d+(?:\.\d+)?)\s*(ms|s|min|h|d)?$", re.IGNORECASE)
_TIMEOUT_UNIT_MS = {"ms": 1, "s": 1000, "min": 60_000, "h": 3_600_000, "d": 86_400_000}
_NOOP = re.compile(r"^\s*(set|reset|discard|deallocate|listen|unlisten)\b", re.IGNORECASE)
_BEGIN = re.compile(r"^\s*(begin|start\s+transaction)\b", re.IGNORECASE)
_COMMIT = re.compile(r"^\s*(commit|end)\b", re.IGNORECASE)
_ROLLBACK = re.compile(r"^\s*(rollback|abort)\b", re.IGNORECASE)
_SHOW = re.compile(r"^\s*show\s+(\"?[\w.]+\"?)\s*;?\s*$", re.IGNORECASE)
_VERSION_CALL = re.compile(r"\b(?:pg_catalog\.)?version\s*\(\s*\)", re.IGNORECASE)
# DuckDB's pg_database has oid, datname, datallowconn and datistemplate only: psql's \l reads
# the columns PostgreSQL has (owner, encoding, locale, ACL) from this stand-in instead.
_PG_DATABASE = (
    "(SELECT oid, datname, datallowconn, datistemplate, 10 AS datdba, 6 AS encoding, "
    "'C' AS datcollate, 'C' AS datctype, 'C' AS datlocale, NULL AS daticulocale, NULL AS daticurules, "
    "'c' AS datlocprovider, NULL::VARCHAR[] AS datacl FROM pg_catalog.pg_database "
    "WHERE datname NOT IN ('system', 'temp'))"
)

# ... and its pg_class lacks relforcerowsecurity, which psql's \d TABLE reads.
_PG_CLASS = "(SELECT *, false AS relforcerowsecurity FROM pg_catalog.pg_class)"

# Catalogs of features DuckDB does not have (row security, extended statistics, publications,
# inheritance, triggers, rules): psql's \d TABLE asks about them, and the answer is "none".
_SINGLE_SELECT = re.compile(r"^\s*select\b[^;]*$", re.IGNORECASE | re.DOTALL)
_ABSENT_CATALOGS = re.compile(
    r"\bpg_catalog\.(?:pg_policy|pg_statistic_ext|pg_publication\w*|pg_inherits|pg_trigger|pg_rewrite"
    r"|pg_partitioned_table|pg_event_trigger)\b",
    re.IGNORECASE,
)

# What psql's catalog commands (\d, \dt, \dv, \dn, \df, \l, \d TABLE) send that DuckDB's pg_catalog
# lacks: the stand-ins above, owner names, encodings, reg* casts, the default collation and the
# OPERATOR(...) syntax.
_PSQL_COMPAT = (
    (re.compile(r"\bpg_catalog\.pg_database\b(?!\s*\()", re.IGNORECASE), _PG_DATABASE),
    (re.compile(r"\bpg_catalog\.pg_class\b(?!\s*\()", re.IGNORECASE), _PG_CLASS),
    (
        re.compile(
            r"::\s*pg_catalog\.reg(?:type|class|namespace)(?:\s*::\s*pg_catalog\.text)?\b", re.IGNORECASE
        ),
        "::VARCHAR",
    ),
    (
        re.compile(r"\b(pg_catalog\.pg_get_expr\s*\([^(),]+,[^(),]+),\s*(?:true|false)\s*\)", re.IGNORECASE),
        r"\1)",
    ),
    # DuckDB's pg_proc holds its built-in functions in no schema; signatures are not kept
    (
        re.compile(
            r"\bpg_catalog\.pg_get_function_(?:result|arguments|identity_arguments)\s*\(\s*[\w.]+\s*\)",
            re.IGNORECASE,
        ),
        "NULL::VARCHAR",
    ),
    # no index definitions in DuckDB's catalog: psql lists the index by name
    (re.compile(r"\bpg_catalog\.pg_get_indexdef\s*\([^()]*\)", re.IGNORECASE), "NULL"),
    (re.compile(r"\b(?:pg_catalog\.)?pg_encoding_to_char\s*\(\s*[\w.]+\s*\)", re.IGNORECASE), "'UTF8'"),
    # DuckDB's pg_catalog.array_to_string is a macro that refuses lists; its own function takes them
    (re.compile(r"\bpg_catalog\.array_to_string\s*\(", re.IGNORECASE), "array_to_string("),
    (re.compile(r"\b(?:pg_catalog\.)?pg_get_userbyid\s*\(\s*[\w.]+\s*\)", re.IGNORECASE), "'trace-ptune'"),
    (re.compile(r"\s+COLLATE\s+(?:pg_catalog\.)?\"?default\"?", re.IGNORECASE), ""),
    (re.compile(r"\bOPERATOR\s*\(\s*(?:pg_catalog\.)?([~!=<>]+)\s*\)", re.IGNORECASE), r"\1"),
)


class PgError(Exception):
    def __init__(self, sqlstate: str, message: str) -> None:
        super().__init__(message)
        self.sqlstate, self.message = sqlstate, message


def _type_of(duck_type: str) -> tuple[int, int]:
    name = duck_type.upper()
    if _JSONISH.search(name):
        return 114, -1
    base = name.split("(", 1)[0].strip()
    return _TYPES.get(base, (25, -1))


# ---------------------------------------------------------------- value encoding


def _text(value: Any, oid: int) -> bytes:
    if isinstance(value, bool):
        return b"t" if value else b"f"
    if isinstance(value, dt.datetime):
        if value.tzinfo is not None:
            value = value.astimezone(dt.UTC).replace(tzinfo=None)
            return (value.isoformat(sep=" ") + "+00").encode()
        return value.isoformat(sep=" ").encode()
    if isinstance(value, dt.date | dt.time):
        return value.isoformat().encode()
    if isinstance(value, dt.timedelta):
        days, rem = value.days, value.seconds
        micro = value.microseconds
        clock = f"{rem // 3600:02d}:{rem % 3600 // 60:02d}:{rem % 60:02d}" + (
            f".{micro:06d}" if micro else ""
        )
        return (f"{days} days {clock}" if days else clock).encode()
    if isinstance(value, float):
        if value != value:
            return b"NaN"
        if value in (float("inf"), float("-inf")):
            return b"Infinity" if value > 0 else b"-Infinity"
        return repr(value).encode()
    if isinstance(value, bytes | bytearray | memoryview):
        return b"\\x" + bytes(value).hex().encode()
    if oid == 114 and not isinstance(value, str):
        return json.dumps(reads.jsonable(value)).encode()
    return str(value).encode()


def _numeric_binary(value: Any) -> bytes:
    d = decimal.Decimal(value)
    if d.is_nan():
        return struct.pack(">hhHh", 0, 0, 0xC000, 0)
    sign, digits, exp = d.as_tuple()
    dscale = max(0, -exp)
    # Integer digit string padded to whole base-10000 groups on both sides of the point.
    s = "".join(map(str, digits))
    if exp > 0:
        s += "0" * exp
        exp = 0
    int_len = len(s) + exp
    int_part, frac_part = (
        s[:int_len] if int_len > 0 else "",
        s[int_len:] if int_len > 0 else "0" * (-int_len) + s,
    )
    int_part = int_part.lstrip("0")
    int_part = "0" * ((4 - len(int_part) % 4) % 4) + int_part
    frac_part = frac_part + "0" * ((4 - len(frac_part) % 4) % 4)
    groups = [int(int_part[i : i + 4]) for i in range(0, len(int_part), 4)]
    weight = len(groups) - 1
    groups += [int(frac_part[i : i + 4]) for i in range(0, len(frac_part), 4)]
    while groups and groups[0] == 0:
        groups.pop(0)
        weight -= 1
    while groups and groups[-1] == 0:
        groups.pop()
    if not groups:
        weight = 0
    return struct.pack(f">hhHh{len(groups)}H", len(groups), weight, 0x4000 if sign else 0, dscale, *groups)


def _binary(value: Any, oid: int) -> bytes:
    if oid == 16:
        return b"\x01" if value else b"\x00"
    if oid == 21:
        return struct.pack(">h", int(value))
    if oid == 23:
        return struct.pack(">i", int(value))
    if oid == 20:
        return struct.pack(">q", int(value))
    if oid == 700:
        return struct.pack(">f", float(value))
    if oid == 701:
        return struct.pack(">d", float(value))
    if oid == 1700:
        return _numeric_binary(value)
    if oid in (1114, 1184):
        if value.tzinfo is not None:
            value = value.astimezone(dt.UTC).replace(tzinfo=None)
        delta = value - _EPOCH_2000
        return struct.pack(">q", (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds)
    if oid == 1082:
        return struct.pack(">i", (value - _DATE_2000).days)
    if oid == 1083:
        return struct.pack(
            ">q", ((value.hour * 60 + value.minute) * 60 + value.second) * 1_000_000 + value.microsecond
        )
    if oid == 1186:
        return struct.pack(">qii", value.seconds * 1_000_000 + value.microseconds, value.days, 0)
    if oid == 2950:
        return uuid.UUID(str(value)).bytes
    if oid == 17:
        return bytes(value)
    return _text(value, oid)


def _param(raw: bytes | None, oid: int, binary: bool) -> Any:
    """A bound parameter as a Python value for DuckDB."""
    if raw is None:
        return None
    if binary:
        if oid == 16:
            return raw != b"\x00"
        if oid in (20, 21, 23):
            return int.from_bytes(raw, "big", signed=True)
        if oid == 700:
            return struct.unpack(">f", raw)[0]
        if oid == 701:
            return struct.unpack(">d", raw)[0]
        if oid in (25, 1043, 114, 0, 705):
            return raw.decode()
        raise PgError("0A000", f"binary parameters of type oid {oid} are not supported; send text parameters")
    text = raw.decode()
    try:
        if oid in (20, 21, 23):
            return int(text)
        if oid in (700, 701):
            return float(text)
        if oid == 1700:
            return decimal.Decimal(text)
        if oid == 16:
            return text.lower() in ("t", "true", "1", "yes", "on")
    except (ValueError, decimal.InvalidOperation):
        raise PgError("22P02", f"invalid input {text!r} for a parameter of type oid {oid}") from None
    return text


def _pg_error(exc: QueryError) -> PgError:
    """A refused or failed query as an ErrorResponse: DuckDB's error class picks the SQLSTATE,
    and a statement the read-only guard refused is 42501."""
    kind = getattr(exc, "duckdb_error", None)
    return PgError(_SQLSTATES.get(kind, "XX000") if kind else "42501", str(exc))


_SQLSTATES = {
    "ParserException": "42601",
    "CatalogException": "42P01",
    "BinderException": "42703",
    "ConversionException": "22P02",
    "InvalidInputException": "22023",
    "OutOfRangeException": "22003",
    "InterruptException": "57014",
}


# ---------------------------------------------------------------- session


@dataclass
class _Prepared:
    sql: str
    param_oids: list[int]
    kind: str  # "select" | "empty" | "tag"
    tag: str = ""
    result: tuple[list[tuple[str, int, int]], list[tuple]] | None = None  # for "show"


@dataclass
class _Portal:
    stmt: _Prepared
    params: list[Any]
    result_formats: list[int]
    columns: list[tuple[str, int, int]] | None = None
    rows: list[tuple] | None = None
    pos: int = 0
    described: bool = False


@dataclass
class _Session:
    prepared: dict[str, _Prepared] = field(default_factory=dict)
    portals: dict[str, _Portal] = field(default_factory=dict)
    status: bytes = b"I"
    skip_to_sync: bool = False


def _timeout_ms(value: str) -> float | None:
    """A ``statement_timeout`` value (milliseconds, or with a unit) -> ms; None for DEFAULT."""
    text = value.strip().strip("'").strip()
    if text.lower() == "default":
        return None
    m = _TIMEOUT_VALUE.match(text)
    if not m:
        raise PgError(
            "22023",
            f'invalid value for parameter "statement_timeout": "{text}"; use milliseconds or e.g. \'5s\'',
        )
    return float(m.group(1)) * _TIMEOUT_UNIT_MS[(m.group(2) or "ms").lower()]


def _classify(sql: str, settings: dict[str, str] | None = None) -> _Prepared:
    stripped = sql.strip().rstrip(";").strip()
    if not stripped or not stripped.strip(";").strip():
        return _Prepared(sql, [], "empty")
    if _BEGIN.match(stripped):
        return _Prepared(sql, [], "tag", "BEGIN")
    if _COMMIT.match(stripped):
        return _Prepared(sql, [], "tag", "COMMIT")
    if _ROLLBACK.match(stripped):
        return _Prepared(sql, [], "tag", "ROLLBACK")
    m = _SHOW.match(stripped)
    if m:
        name = m.group(1).strip('"').lower()
        known = {**_SETTINGS, **(settings or {})}
        if name in known or name == "all":
            rows = [(name, known[name])] if name != "all" else sorted(known.items())
            if name != "all":
                return _Prepared(sql, [], "show", result=([(name, 25, -1)], [(rows[0][1],)]))
            return _Prepared(sql, [], "show", result=([("name", 25, -1), ("setting", 25, -1)], rows))
    if _NOOP.match(stripped):
        word = stripped.split(None, 1)[0].upper()
        return _Prepared(sql, [], "tag", "DISCARD ALL" if word == "DISCARD" else word)
    text = _VERSION_CALL.sub("'" + VERSION_STRING.replace("'", "''") + "'", stripped)
    if "pg_catalog" in text:
        if _ABSENT_CATALOGS.search(text) and _SINGLE_SELECT.match(text):
            # answered without running (and so without parsing PostgreSQL-only syntax)
            return _Prepared(sql, [], "show", result=([("?column?", 25, -1)], []))
        for pattern, repl in _PSQL_COMPAT:
            text = pattern.sub(repl, text)
    try:
        check_read_only(text)
    except QueryError as exc:
        raise PgError("42501" if "allowed" in str(exc) or "read" in str(exc) else "42601", str(exc)) from None
    return _Prepared(text, [], "select")


class _Handler(socketserver.StreamRequestHandler):
    server: PgServer

    # ------------------------------------------------------------ framing

    def _read_exact(self, n: int) -> bytes:
        data = self.rfile.read(n)
        if len(data) != n:
            raise ConnectionError("client closed the connection")
        return data

    def _send(self, kind: bytes, payload: bytes = b"") -> None:
        self._out.append(kind + struct.pack(">i", len(payload) + 4) + payload)

    def _flush(self) -> None:
        if self._out:
            self.wfile.write(b"".join(self._out))
            self._out.clear()
        self.wfile.flush()

    def _error(self, sqlstate: str, message: str, severity: str = "ERROR") -> None:
        fields = b"S" + severity.encode() + b"\0V" + severity.encode() + b"\0C" + sqlstate.encode() + b"\0"
        fields += b"M" + message.encode("utf-8", "replace") + b"\0\0"
        self._send(b"E", fields)

    def _ready(self) -> None:
        self._send(b"Z", self.session.status)
        self._flush()

    # ------------------------------------------------------------ startup

    def handle(self) -> None:
        self._out: list[bytes] = []
        self.session = _Session()
        self.interrupt = reads.Interrupt(self.server.query_timeout)
        self._cancel_key: int | None = None
        self._statement_timeout_ms: float | None = None
        try:
            if not self._startup():
                return
            while True:
                kind = self.rfile.read(1)
                if not kind:
                    return
                (length,) = struct.unpack(">i", self._read_exact(4))
                if length < 4 or length > 64 * 1024 * 1024:
                    self._error("08P01", f"invalid message length {length}")
                    self._flush()
                    return
                body = self._read_exact(length - 4)
                if kind == b"X":
                    return
                self._dispatch(kind, body)
        except (ConnectionError, OSError, struct.error):
            return
        finally:
            if self._cancel_key is not None:
                self.server.unregister(self._cancel_key)

    def _startup(self) -> bool:
        while True:
            (length,) = struct.unpack(">i", self._read_exact(4))
            if length < 8 or length > 10000:
                return False
            body = self._read_exact(length - 4)
            (code,) = struct.unpack(">i", body[:4])
            if code in (_SSL_REQUEST, _GSS_REQUEST):
                self.wfile.write(b"N")
                self.wfile.flush()
                continue
            if code == _CANCEL_REQUEST:
                if len(body) >= 12:  # the process id and secret key from BackendKeyData
                    self.server.cancel(*struct.unpack(">ii", body[4:12]))
                return False
            if code != _PROTOCOL_3:
                self._error(
                    "08P01", f"unsupported frontend protocol {code >> 16}.{code & 0xFFFF}; use 3.0", "FATAL"
                )
                self._flush()
                return False
            parts = body[4:].split(b"\0")
            params = {
                parts[i].decode(): parts[i + 1].decode() for i in range(0, len(parts) - 1, 2) if parts[i]
            }
            break
        password = self.server.password
        if password is not None:
            self._send(b"R", struct.pack(">i", 3))  # AuthenticationCleartextPassword
            self._flush()
            kind = self._read_exact(1)
            (length,) = struct.unpack(">i", self._read_exact(4))
            given = self._read_exact(length - 4).rstrip(b"\0")
            if kind != b"p" or not hmac.compare_digest(given, password.encode()):
                user = params.get("user", "")
                self._error("28P01", f'password authentication failed for user "{user}"', "FATAL")
                self._flush()
                return False
        self._send(b"R", struct.pack(">i", 0))  # AuthenticationOk
        status = dict(_SETTINGS)
        status["application_name"] = params.get("application_name", "")
        for key in (
            "server_version",
            "server_encoding",
            "client_encoding",
            "application_name",
            "datestyle",
            "timezone",
            "integer_datetimes",
            "standard_conforming_strings",
            "intervalstyle",
            "is_superuser",
            "default_transaction_read_only",
        ):
            name = {"datestyle": "DateStyle", "timezone": "TimeZone", "intervalstyle": "IntervalStyle"}.get(
                key, key
            )
            self._send(b"S", name.encode() + b"\0" + status[key].encode() + b"\0")
        self._cancel_key = self.server.register(self.interrupt)
        self._send(b"K", struct.pack(">ii", self.server.pid, self._cancel_key))
        self._ready()
        return True

    # ------------------------------------------------------------ messages

    def _dispatch(self, kind: bytes, body: bytes) -> None:
        s = self.session
        if kind == b"Q":
            self._simple(body.rstrip(b"\0").decode("utf-8", "replace"))
            self._ready()
            return
        if kind == b"S":
            s.skip_to_sync = False
            self._ready()
            return
        if kind == b"H":
            self._flush()
            return
        if s.skip_to_sync:
            return
        try:
            if kind == b"P":
                self._parse(body)
            elif kind == b"B":
                self._bind(body)
            elif kind == b"D":
                self._describe(body)
            elif kind == b"E":
                self._execute(body)
            elif kind == b"C":
                target, name = body[:1], body[1:].split(b"\0", 1)[0].decode()
                (s.prepared if target == b"S" else s.portals).pop(name, None)
                self._send(b"3")
            else:
                raise PgError("08P01", f"unsupported message type {kind!r}")
        except PgError as exc:
            self._fail(exc.sqlstate, exc.message)
            s.skip_to_sync = True

    def _fail(self, sqlstate: str, message: str) -> None:
        self._error(sqlstate, message)
        if self.session.status == b"T":
            self.session.status = b"E"

    def _settings(self) -> dict[str, str]:
        ms = self._statement_timeout_ms
        return {
            "statement_timeout": "0" if not ms else (f"{ms / 1000:g}s" if ms % 1000 == 0 else f"{ms:g}ms")
        }

    def _apply(self, stmt: _Prepared) -> None:
        """A SET answered without DuckDB: ``statement_timeout`` takes effect, the rest is ignored."""
        m = _STATEMENT_TIMEOUT.match(stmt.sql)
        if m:
            value = m.group("value")
            ms = _timeout_ms(value) if value is not None else None
            self._statement_timeout_ms = ms or None
            limits = [t for t in (self.server.query_timeout, (ms or 0) / 1000) if t]
            self.interrupt.timeout = min(limits) if limits else None
        self._complete_tag(stmt.tag)

    def _complete_tag(self, tag: str) -> None:
        """CommandComplete for a statement answered without DuckDB; BEGIN/COMMIT move the status."""
        if tag == "BEGIN":
            self.session.status = b"T"
        elif tag in ("COMMIT", "ROLLBACK"):
            self.session.status = b"I"
        self._send(b"C", tag.encode() + b"\0")

    def _simple(self, sql: str) -> None:
        try:
            statements = [st.query for st in duckdb.extract_statements(sql)] if sql.strip() else []
        except duckdb.Error:
            statements = [sql]  # PostgreSQL-only syntax (SET x TO y, ...) is classified below
        if not statements:
            self._send(b"I")  # EmptyQueryResponse
            return
        for text in statements:
            try:
                stmt = _classify(text, self._settings())
                if stmt.kind == "empty":
                    self._send(b"I")
                    continue
                if stmt.kind == "tag":
                    self._apply(stmt)
                    continue
                portal = _Portal(stmt, [], [0])
                self._run(portal)
                self._row_description(portal)
                self._data_rows(portal, 0)
            except PgError as exc:
                self._fail(exc.sqlstate, exc.message)
                return

    def _parse(self, body: bytes) -> None:
        name, rest = body.split(b"\0", 1)
        query, rest = rest.split(b"\0", 1)
        (n,) = struct.unpack(">h", rest[:2])
        oids = list(struct.unpack(f">{n}i", rest[2 : 2 + 4 * n])) if n else []
        stmt = _classify(query.decode("utf-8", "replace"), self._settings())
        stmt.param_oids = oids
        if stmt.kind == "select":
            count = _param_count(stmt.sql)
            stmt.param_oids = (oids + [0] * count)[: max(count, len(oids))]
        self.session.prepared[name.decode()] = stmt
        self._send(b"1")  # ParseComplete

    def _bind(self, body: bytes) -> None:
        portal_name, rest = body.split(b"\0", 1)
        stmt_name, rest = rest.split(b"\0", 1)
        stmt = self.session.prepared.get(stmt_name.decode())
        if stmt is None:
            raise PgError("26000", f'prepared statement "{stmt_name.decode()}" does not exist')
        off = 0
        (nfmt,) = struct.unpack_from(">h", rest, off)
        off += 2
        fmts = list(struct.unpack_from(f">{nfmt}h", rest, off))
        off += 2 * nfmt
        (nparams,) = struct.unpack_from(">h", rest, off)
        off += 2
        params = []
        for i in range(nparams):
            (ln,) = struct.unpack_from(">i", rest, off)
            off += 4
            raw = None if ln < 0 else rest[off : off + ln]
            off += max(ln, 0)
            fmt = fmts[i] if len(fmts) > 1 else (fmts[0] if fmts else 0)
            oid = stmt.param_oids[i] if i < len(stmt.param_oids) else 0
            params.append(_param(raw, oid, fmt == 1))
        (nres,) = struct.unpack_from(">h", rest, off)
        off += 2
        result_formats = list(struct.unpack_from(f">{nres}h", rest, off)) if nres else [0]
        self.session.portals[portal_name.decode()] = _Portal(stmt, params, result_formats)
        self._send(b"2")  # BindComplete

    def _describe(self, body: bytes) -> None:
        target, name = body[:1], body[1:].split(b"\0", 1)[0].decode()
        if target == b"S":
            stmt = self.session.prepared.get(name)
            if stmt is None:
                raise PgError("26000", f'prepared statement "{name}" does not exist')
            oids = [o or 25 for o in stmt.param_oids]
            self._send(b"t", struct.pack(f">h{len(oids)}i", len(oids), *oids))
            if stmt.kind == "select":
                cols = self._columns_of(stmt)
                self._send_row_description(cols, [0])
            elif stmt.kind == "show" and stmt.result:
                self._send_row_description(stmt.result[0], [0])
            else:
                self._send(b"n")  # NoData
            return
        portal = self.session.portals.get(name)
        if portal is None:
            raise PgError("34000", f'portal "{name}" does not exist')
        if portal.stmt.kind in ("select", "show"):
            self._run(portal)
            self._row_description(portal)
            portal.described = True
        else:
            self._send(b"n")

    def _execute(self, body: bytes) -> None:
        name, rest = body.split(b"\0", 1)
        (max_rows,) = struct.unpack(">i", rest[:4])
        portal = self.session.portals.get(name.decode())
        if portal is None:
            raise PgError("34000", f'portal "{name.decode()}" does not exist')
        stmt = portal.stmt
        if stmt.kind == "empty":
            self._send(b"I")
            return
        if stmt.kind == "tag":
            self._apply(stmt)
            return
        self._run(portal)
        self._data_rows(portal, max_rows)

    # ------------------------------------------------------------ results

    def _columns_of(self, stmt: _Prepared) -> list[tuple[str, int, int]]:
        wrapped = f"SELECT * FROM ({stmt.sql.rstrip().rstrip(';')}) AS __ptune_describe LIMIT 0"
        n = len(stmt.param_oids)

        def describe(cur: duckdb.DuckDBPyConnection) -> list:
            with self.interrupt.guard(cur):
                return cur.execute(wrapped, [None] * n if n else None).description or []

        try:
            desc = self.server.store.read(describe)
        except QueryError as exc:
            raise _pg_error(exc) from None
        return [(d[0], *_type_of(str(d[1]))) for d in desc]

    def _run(self, portal: _Portal) -> None:
        if portal.rows is not None:
            return
        stmt = portal.stmt
        if stmt.kind == "show" and stmt.result:
            portal.columns, portal.rows = stmt.result
            return
        t0 = time.perf_counter()
        try:
            res = self.server.store.read(
                lambda cur: reads.execute(cur, stmt.sql, portal.params, self.interrupt)
            )
        except QueryError as exc:
            raise _pg_error(exc) from None
        finally:
            self.server.store.stats.count_query("pg", time.perf_counter() - t0, self.interrupt.stopped)
        portal.columns = [(c, *_type_of(t)) for c, t in zip(res.columns, res.types, strict=True)]
        portal.rows = res.rows

    def _row_description(self, portal: _Portal) -> None:
        if portal.described:
            return
        self._send_row_description(portal.columns or [], portal.result_formats)

    def _send_row_description(self, columns: list[tuple[str, int, int]], formats: list[int]) -> None:
        parts = [struct.pack(">h", len(columns))]
        for i, (name, oid, size) in enumerate(columns):
            fmt = formats[i] if len(formats) > 1 else (formats[0] if formats else 0)
            parts.append(name.encode() + b"\0" + struct.pack(">ihihih", 0, 0, oid, size, -1, fmt))
        self._send(b"T", b"".join(parts))

    def _data_rows(self, portal: _Portal, max_rows: int) -> None:
        cols = portal.columns or []
        rows = portal.rows or []
        fmts = portal.result_formats
        binary = [(fmts[i] if len(fmts) > 1 else (fmts[0] if fmts else 0)) == 1 for i in range(len(cols))]
        end = len(rows) if max_rows <= 0 else min(len(rows), portal.pos + max_rows)
        ncols = struct.pack(">h", len(cols))
        for row in rows[portal.pos : end]:
            parts = [ncols]
            for value, (_, oid, _), is_bin in zip(row, cols, binary, strict=True):
                if value is None:
                    parts.append(b"\xff\xff\xff\xff")
                    continue
                data = _binary(value, oid) if is_bin else _text(value, oid)
                parts.append(struct.pack(">i", len(data)) + data)
            self._send(b"D", b"".join(parts))
        sent = end - portal.pos
        portal.pos = end
        if end < len(rows):
            self._send(b"s")  # PortalSuspended
        else:
            self._send(b"C", f"SELECT {len(rows) if max_rows <= 0 else sent}".encode() + b"\0")


_PARAM = re.compile(r"\$(\d+)")
_STRINGS = re.compile(r"'(?:[^']|'')*'")


def _param_count(sql: str) -> int:
    found = [int(m) for m in _PARAM.findall(_STRINGS.sub("''", sql))]
    return max(found, default=0)


class PgServer(socketserver.ThreadingTCPServer):
    """``ThreadingTCPServer`` speaking the PostgreSQL protocol; one thread per connection."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(
        self,
        address: tuple[str, int],
        store: Store,
        *,
        password: str | None = None,
        query_timeout: float | None = reads.DEFAULT_TIMEOUT_S,
    ) -> None:
        self.store = store
        self.password = password
        self.query_timeout = query_timeout
        self.pid = os.getpid() & 0x7FFFFFFF
        self._sessions: dict[int, reads.Interrupt] = {}
        self._sessions_lock = threading.Lock()
        super().__init__(address, _Handler)

    def register(self, interrupt: reads.Interrupt) -> int:
        """A session's secret cancel key (BackendKeyData): random, so only its client knows it."""
        with self._sessions_lock:
            key = secrets.randbits(31)
            while key in self._sessions:
                key = secrets.randbits(31)
            self._sessions[key] = interrupt
            return key

    def unregister(self, key: int) -> None:
        with self._sessions_lock:
            self._sessions.pop(key, None)

    def cancel(self, pid: int, key: int) -> bool:
        """A CancelRequest: stop that session's running query; a wrong pid or key does nothing."""
        with self._sessions_lock:
            interrupt = self._sessions.get(key) if pid == self.pid else None
        return interrupt is not None and interrupt.cancel()

    def serve_in_thread(self) -> threading.Thread:
        thread = threading.Thread(target=self.serve_forever, name="trace-ptune-pgwire", daemon=True)
        thread.start()
        return thread
