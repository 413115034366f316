"""OTLP protobuf messages to column batches for the DuckDB tables.

Conversion is the collector's hot path, so it works in bulk: one pass over the spans builds
row tuples (attributes and events as JSON text), promoted columns are read from the attribute
dict, and evaluations in all three encodings come out of the same pass:

- a span event named ``gen_ai.evaluation.result`` scores the span that carries it;
- a log record with that event name scores the span of its trace/span context;
- a span carrying ``gen_ai.evaluation.name`` scores its parent span.

Timestamps are kept as integer microseconds since the epoch until the writer inserts them.
"""

from __future__ import annotations

import base64
import functools
import json
import operator
import os
from dataclasses import dataclass, field
from typing import Any

from trace_ptune import semconv
from trace_ptune.errors import CollectorError

try:  # optional: converted batches travel to the writer as Arrow tables
    import pyarrow as pa
except ImportError:  # pragma: no cover - exercised only without the collector extra
    pa = None

_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), default=str).encode

SPAN_KINDS = ("Unspecified", "Internal", "Server", "Client", "Producer", "Consumer")
STATUS_CODES = ("Unset", "Ok", "Error")

# Columns of each table in DDL order (trace_ptune.collector.schema); rows are tuples in this order.
SPAN_COLUMNS = (
    "Timestamp", "TraceId", "SpanId", "ParentSpanId", "TraceState", "SpanName", "SpanKind",
    "ServiceName", "ResourceAttributes", "ScopeName", "ScopeVersion", "SpanAttributes", "Duration",
    "StatusCode", "StatusMessage", "Events", "Links", "adapter_hash", "adapter_name",
    "adapter_version", "deployment", "tenant", "traffic", "base_model_name", "base_fingerprint",
    "operation", "request_model", "response_id", "input_tokens", "output_tokens", "virtual_tokens",
    "train_run_id",
)  # fmt: skip
EVAL_COLUMNS = (
    "Timestamp", "TraceId", "SpanId", "EvalSpanId", "source", "name", "score_value", "score_label",
    "explanation", "response_id", "adapter_hash", "adapter_name", "deployment", "tenant", "traffic",
    "base_fingerprint", "ServiceName", "Attributes",
)  # fmt: skip
METRIC_COLUMNS = (
    "Timestamp", "StartTimestamp", "ServiceName", "ResourceAttributes", "ScopeName", "MetricName",
    "MetricDescription", "MetricUnit", "MetricType", "Attributes", "Value", "Count", "Sum", "Min",
    "Max", "BucketCounts", "ExplicitBounds", "IsMonotonic", "AggregationTemporality",
)  # fmt: skip
LOG_COLUMNS = (
    "Timestamp", "ObservedTimestamp", "TraceId", "SpanId", "SeverityText", "SeverityNumber",
    "ServiceName", "ResourceAttributes", "ScopeName", "EventName", "Body", "LogAttributes",
)  # fmt: skip
ADAPTER_COLUMNS = (
    "adapter_hash", "adapter_name", "adapter_version", "parent_hash", "method", "num_virtual_tokens",
    "base_model_name", "base_fingerprint", "first_seen", "last_seen",
)  # fmt: skip

# Column types the writer needs to build typed batches: "ts" (µs int -> TIMESTAMP), "int",
# "float", "bool", "json" (text this module encoded: handed to DuckDB as Arrow's JSON extension
# type, which DuckDB takes without re-parsing every document), anything else is text.
COLUMN_KINDS: dict[str, dict[str, str]] = {
    semconv.TABLE_SPANS: {
        "Timestamp": "ts", "Duration": "int", "adapter_version": "int", "input_tokens": "int",
        "output_tokens": "int", "virtual_tokens": "int", "ResourceAttributes": "json",
        "SpanAttributes": "json", "Events": "json", "Links": "json",
    },
    semconv.TABLE_EVALUATIONS: {"Timestamp": "ts", "score_value": "float", "Attributes": "json"},
    semconv.TABLE_METRICS: {
        "Timestamp": "ts", "StartTimestamp": "ts", "Value": "float", "Count": "int", "Sum": "float",
        "Min": "float", "Max": "float", "IsMonotonic": "bool", "ResourceAttributes": "json",
        "Attributes": "json", "BucketCounts": "json", "ExplicitBounds": "json",
    },
    semconv.TABLE_LOGS: {
        "Timestamp": "ts", "ObservedTimestamp": "ts", "SeverityNumber": "int",
        "ResourceAttributes": "json", "Body": "json", "LogAttributes": "json",
    },
    semconv.TABLE_ADAPTERS: {
        "adapter_version": "int", "num_virtual_tokens": "int", "first_seen": "ts", "last_seen": "ts",
    },
}  # fmt: skip
TABLE_COLUMNS: dict[str, tuple[str, ...]] = {
    semconv.TABLE_SPANS: SPAN_COLUMNS,
    semconv.TABLE_EVALUATIONS: EVAL_COLUMNS,
    semconv.TABLE_METRICS: METRIC_COLUMNS,
    semconv.TABLE_LOGS: LOG_COLUMNS,
    semconv.TABLE_ADAPTERS: ADAPTER_COLUMNS,
}

# The evaluation columns copied from the scored span when the evaluation lacks them.
FILL_COLUMNS = ("adapter_hash", "adapter_name", "deployment", "tenant", "traffic", "base_fingerprint")

_SERVICE_NAME = "service.name"
_EVENT_NAME_ATTR = "event.name"  # log-record attribute used before LogRecord.event_name existed

_A = semconv
_PROMOTED = (
    _A.PTUNE_ADAPTER_HASH, _A.PTUNE_ADAPTER_NAME, _A.PTUNE_ADAPTER_VERSION, _A.PTUNE_DEPLOYMENT,
    _A.PTUNE_TENANT, _A.PTUNE_TRAFFIC, _A.PTUNE_BASE_MODEL_NAME, _A.PTUNE_BASE_MODEL_FINGERPRINT,
    _A.GEN_AI_OPERATION_NAME, _A.GEN_AI_REQUEST_MODEL, _A.GEN_AI_RESPONSE_ID,
    _A.GEN_AI_USAGE_INPUT_TOKENS, _A.GEN_AI_USAGE_OUTPUT_TOKENS, _A.PTUNE_USAGE_VIRTUAL_TOKENS,
    _A.PTUNE_TRAIN_RUN_ID,
)  # fmt: skip
_INT_PROMOTED = frozenset(
    {
        _A.PTUNE_ADAPTER_VERSION,
        _A.GEN_AI_USAGE_INPUT_TOKENS,
        _A.GEN_AI_USAGE_OUTPUT_TOKENS,
        _A.PTUNE_USAGE_VIRTUAL_TOKENS,
    }
)
_EVAL_ATTR_FILL = (
    _A.PTUNE_ADAPTER_HASH, _A.PTUNE_ADAPTER_NAME, _A.PTUNE_DEPLOYMENT, _A.PTUNE_TENANT,
    _A.PTUNE_TRAFFIC, _A.PTUNE_BASE_MODEL_FINGERPRINT,
)  # fmt: skip


@dataclass
class Batch:
    """Rows converted from one export request, ready for the writer.

    Converters fill ``rows`` (row tuples) or ``columns`` (column lists, in table column order);
    :meth:`freeze` turns both into one Arrow table per table name (``tables``), in the process
    that converted them, so the writer only concatenates and inserts.
    """

    rows: dict[str, list[tuple]] = field(default_factory=dict)
    columns: dict[str, list[tuple[list[Any], int]]] = field(default_factory=dict)  # name -> chunks
    tables: dict[str, Any] = field(default_factory=dict)  # name -> pyarrow.Table (after freeze)
    counts: dict[str, int] = field(default_factory=dict)  # name -> rows (after freeze)
    adapters: dict[str, list] = field(default_factory=dict)  # hash -> ADAPTER_COLUMNS values
    accepted: int = 0  # spans / data points / log records accepted
    rejected: int = 0
    error: str = ""  # partial_success message
    missing: set[str] = field(default_factory=set)  # scored SpanIds whose evaluations lack columns
    eval_min_ts: int | None = None  # earliest evaluation timestamp (µs), after freeze

    def table(self, name: str) -> list[tuple]:
        rows = self.rows.get(name)
        if rows is None:
            rows = self.rows[name] = []
        return rows

    def add_columns(self, name: str, cols: list[Any], n: int) -> None:
        """Add ``n`` rows as columns (one chunk per converted request)."""
        self.columns.setdefault(name, []).append((cols, n))

    @property
    def size(self) -> int:
        if self.counts:
            return sum(self.counts.values())
        chunked = sum(n for chunks in self.columns.values() for _, n in chunks)
        return sum(len(r) for r in self.rows.values()) + chunked

    def freeze(self) -> Batch:
        """Build the Arrow tables (row tuples when pyarrow is missing); return ``self``."""
        if self.counts:
            return self
        evals = self.rows.get(semconv.TABLE_EVALUATIONS)
        if evals and pa is None:  # pragma: no cover - without pyarrow
            self.eval_min_ts = min(r[0] for r in evals)
        parts: dict[str, list[Any]] = {}
        if pa is None:  # pragma: no cover - without pyarrow: everything as row tuples
            for name, chunks in self.columns.items():
                for cols, n in chunks:
                    if n:
                        full = [c.expand() if isinstance(c, _Runs) else c for c in cols]
                        self.table(name).extend(zip(*full, strict=True))
        else:
            for name, chunks in self.columns.items():
                for cols, n in chunks:
                    if n:
                        parts.setdefault(name, []).append(_arrow_table(name, cols, n))
        for name, rows in self.rows.items():
            if rows and pa is not None:
                parts.setdefault(name, []).append(
                    _arrow_table(name, list(zip(*rows, strict=True)), len(rows))
                )
            elif rows:  # pragma: no cover - without pyarrow
                self.counts[name] = len(rows)
        for name, tables in parts.items():
            self.tables[name] = tables[0] if len(tables) == 1 else pa.concat_tables(tables)
            self.counts[name] = sum(t.num_rows for t in tables)
        if semconv.TABLE_EVALUATIONS in self.tables:
            import pyarrow.compute as pc

            ts = self.tables[semconv.TABLE_EVALUATIONS].column("Timestamp").cast(pa.int64())
            self.eval_min_ts = pc.min(ts).as_py()
        if pa is not None:
            self.rows = {}
        self.columns = {}
        return self


_ARROW_TYPES: dict[str, Any] = {}


def _arrow_type(kind: str) -> Any:
    if not _ARROW_TYPES:
        json_type = pa.json_(pa.string()) if hasattr(pa, "json_") else pa.string()  # pyarrow >= 19
        _ARROW_TYPES.update(
            ts=pa.timestamp("us"),
            int=pa.int64(),
            float=pa.float64(),
            bool=pa.bool_(),
            text=pa.string(),
            json=json_type,
        )
    return _ARROW_TYPES[kind]


def _arrow_column(col: Any, typ: Any, n: int) -> Any:
    if isinstance(col, pa.Array):
        return col
    if isinstance(col, _Runs):
        parts = [pa.repeat(pa.scalar(v, type=typ), c) for v, c in col.runs]
        return parts[0] if len(parts) == 1 else pa.concat_arrays(parts)
    return pa.array(col, type=typ, size=n)


@functools.cache
def _column_types(table: str, columns: tuple[str, ...]) -> list[Any]:
    """The Arrow types of ``columns`` of ``table``."""
    kinds = COLUMN_KINDS.get(table, {})
    return [_arrow_type(kinds.get(c, "text")) for c in columns]


def _arrow_table(name: str, cols: list[Any], n: int) -> Any:
    names = TABLE_COLUMNS[name]
    types = _column_types(name, names)
    arrays = [_arrow_column(col, typ, n) for col, typ in zip(cols, types, strict=True)]
    return pa.Table.from_arrays(arrays, names=list(names))


# ---------------------------------------------------------------- values


def any_value(v: Any) -> Any:
    """An OTLP ``AnyValue`` as a JSON-ready Python value (bytes as base64)."""
    which = v.WhichOneof("value")
    if which is None:
        return None
    if which == "array_value":
        return [any_value(x) for x in v.array_value.values]
    if which == "kvlist_value":
        return {kv.key: any_value(kv.value) for kv in v.kvlist_value.values}
    if which == "bytes_value":
        return base64.b64encode(v.bytes_value).decode()
    return getattr(v, which)


def attributes(kvs: Any) -> dict[str, Any]:
    """A repeated ``KeyValue`` as a dict (scalars read directly: this is the hot loop)."""
    out: dict[str, Any] = {}
    for kv in kvs:
        v = kv.value
        which = v.WhichOneof("value")
        if which == "string_value":
            out[kv.key] = v.string_value
        elif which in ("int_value", "double_value", "bool_value"):
            out[kv.key] = getattr(v, which)
        else:
            out[kv.key] = any_value(v) if which else None
    return out


def _num(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None if value is None else float(value)
    if isinstance(value, int | float):
        return float(value)
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _int(value: Any) -> int | None:
    """An integer column's value: None when absent, not a number or outside BIGINT."""
    if value is None:
        return None
    try:
        out = int(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return out if -(2**63) <= out < 2**63 else None


def _str(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return str(value)


class _Resource:
    """Per-resource values shared by every row under it (computed once)."""

    __slots__ = ("json", "service")

    def __init__(self, resource: Any) -> None:
        attrs = attributes(resource.attributes)
        self.service = _str(attrs.get(_SERVICE_NAME))
        self.json = _dumps(attrs)


# ---------------------------------------------------------------- traces


class MalformedPayload(CollectorError):
    """The request body is not a valid OTLP message (HTTP 400, gRPC INVALID_ARGUMENT)."""


# ---------------------------------------------------------------- the projection
#
# Walking upb messages from Python costs ~0.2 µs per attribute (one wrapper object per
# KeyValue and AnyValue). A protobuf trace request is therefore parsed into a *projection* of
# the OTLP trace messages: the same field numbers, but ``attributes`` (and links and the
# resource) declared as ``bytes``. Protobuf's wire format encodes a sub-message and a bytes
# field identically, so each attribute arrives as its serialized ``KeyValue`` bytes, which are
# exactly the key of the attribute cache: most attributes repeat across spans, and a hit costs
# one dict lookup. A miss parses the bytes with the real ``KeyValue`` type, so malformed
# attributes are still refused.

_Z16 = bytes(16)
_Z8 = bytes(8)


def _projection() -> Any:
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    fd = descriptor_pb2.FileDescriptorProto(
        name="trace_ptune/collector/otlp_trace_projection.proto",
        package="trace_ptune.collector.projection",
        syntax="proto3",
    )
    F = descriptor_pb2.FieldDescriptorProto
    pkg = ".trace_ptune.collector.projection."
    messages = {
        "Request": [("resource_spans", 1, F.TYPE_MESSAGE, True, "ResourceSpans")],
        "ResourceSpans": [
            ("resource", 1, F.TYPE_BYTES, False, None),
            ("scope_spans", 2, F.TYPE_MESSAGE, True, "ScopeSpans"),
        ],
        "ScopeSpans": [
            ("scope", 1, F.TYPE_MESSAGE, False, "Scope"),
            ("spans", 2, F.TYPE_MESSAGE, True, "Span"),
        ],
        "Scope": [("name", 1, F.TYPE_STRING, False, None), ("version", 2, F.TYPE_STRING, False, None)],
        "Span": [
            ("trace_id", 1, F.TYPE_BYTES, False, None),
            ("span_id", 2, F.TYPE_BYTES, False, None),
            ("trace_state", 3, F.TYPE_STRING, False, None),
            ("parent_span_id", 4, F.TYPE_BYTES, False, None),
            ("name", 5, F.TYPE_STRING, False, None),
            ("kind", 6, F.TYPE_INT32, False, None),
            ("start_time_unix_nano", 7, F.TYPE_FIXED64, False, None),
            ("end_time_unix_nano", 8, F.TYPE_FIXED64, False, None),
            ("attributes", 9, F.TYPE_BYTES, True, None),
            ("events", 11, F.TYPE_MESSAGE, True, "Event"),
            ("links", 13, F.TYPE_BYTES, True, None),
            ("status", 15, F.TYPE_MESSAGE, False, "Status"),
        ],
        "Event": [
            ("time_unix_nano", 1, F.TYPE_FIXED64, False, None),
            ("name", 2, F.TYPE_STRING, False, None),
            ("attributes", 3, F.TYPE_BYTES, True, None),
        ],
        "Status": [("message", 2, F.TYPE_STRING, False, None), ("code", 3, F.TYPE_INT32, False, None)],
    }
    for name, fields in messages.items():
        m = fd.message_type.add(name=name)
        for fname, num, ftype, repeated, tname in fields:
            f = m.field.add(name=fname, number=num, type=ftype)
            f.label = F.LABEL_REPEATED if repeated else F.LABEL_OPTIONAL
            if tname:
                f.type_name = pkg + tname
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fd)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(pkg[1:] + "Request"))


_PROJECTION: Any = None


def _parse_projection(body: bytes) -> Any:
    global _PROJECTION
    if _PROJECTION is None:
        _PROJECTION = _projection()
    from google.protobuf.message import DecodeError

    msg = _PROJECTION()
    try:
        msg.ParseFromString(body)
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise MalformedPayload(f"the body is not a valid OTLP spans protobuf message: {exc}") from None
    return msg


def _pb(name: str) -> Any:
    from opentelemetry.proto.common.v1 import common_pb2
    from opentelemetry.proto.resource.v1 import resource_pb2
    from opentelemetry.proto.trace.v1 import trace_pb2

    return {
        "KeyValue": common_pb2.KeyValue,
        "Resource": resource_pb2.Resource,
        "Link": trace_pb2.Span.Link,
    }[name]


def _parse_nested(cls_name: str, raw: bytes) -> Any:
    from google.protobuf.message import DecodeError

    try:
        return _pb(cls_name).FromString(raw)
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise MalformedPayload(f"the body has a malformed OTLP {cls_name}: {exc}") from None


# Attributes read while walking a span: the promoted columns, then four extras that are not
# span columns (the evaluation marker and the adapter-lineage fields of the adapters table).
_EXTRAS = (
    semconv.GEN_AI_EVALUATION_NAME,
    semconv.PTUNE_ADAPTER_PARENT_HASH,
    semconv.PTUNE_ADAPTER_METHOD,
    semconv.PTUNE_ADAPTER_NUM_VIRTUAL_TOKENS,
)
_PROMOTED_INDEX = {k: i for i, k in enumerate(_PROMOTED + _EXTRAS)}
_EVAL_NAME_INDEX = len(_PROMOTED)
_N_PV = len(_PROMOTED) + len(_EXTRAS)
_PV_RANGE = range(_N_PV)
_INT_PROMOTED = _INT_PROMOTED | {semconv.PTUNE_ADAPTER_NUM_VIRTUAL_TOKENS}


def _scalar(v: Any) -> Any:
    which = v.WhichOneof("value")
    if which == "string_value":
        return v.string_value
    if which in ("int_value", "double_value", "bool_value"):
        return getattr(v, which)
    return any_value(v) if which else None


# A span's adapter identity (ADAPTER_COLUMNS after the hash) from its promoted values.
_IDENT_OF = operator.itemgetter(1, 2, 16, 17, 18, 6, 7)
_COMPLEX = ("complex",)  # marker: an evaluation event that needs the full _eval_row


class _AttrCache:
    """Serialized ``KeyValue`` bytes -> its JSON fragment (``frag``), its promoted column
    (``prom``: (index, value), promoted keys only) and its (key, value) pair (``kv``).

    Most attribute values repeat across spans (model, adapter hash, tenant, token counts), so a
    span's attribute JSON is a join of cached fragments, looked up with ``map`` (no Python-level
    loop per attribute). Bounded: cleared past ``limit`` entries.
    """

    def __init__(self, limit: int = 200_000) -> None:
        self.frag: dict[bytes, str] = {}
        self.prom: dict[bytes, tuple[int, Any]] = {}
        self.kv: dict[bytes, tuple[str, Any]] = {}
        self.limit = limit

    def miss(self, raw: bytes) -> str:
        kv = _parse_nested("KeyValue", raw)
        value = _scalar(kv.value)
        key = kv.key
        if len(self.frag) >= self.limit:
            self.frag.clear()
            self.prom.clear()
            self.kv.clear()
        idx = _PROMOTED_INDEX.get(key, -1)
        if idx >= 0 and value is not None:
            self.prom[raw] = (idx, _int(value) if key in _INT_PROMOTED else _str(value))
        self.kv[raw] = (key, value)
        frag = self.frag[raw] = _dumps(key) + ":" + _dumps(value)
        return frag

    def frags(self, raws: Any) -> list[str]:
        """JSON fragments of a repeated attribute field (filling the cache on misses)."""
        out = list(map(self.frag.get, raws))
        if None in out:
            out = [f if f is not None else self.miss(r) for f, r in zip(out, raws, strict=True)]
        return out


_ISO_SECONDS: dict[int, str] = {}


def _iso_base(sec: int) -> str:
    import datetime as dt

    base = (dt.datetime(1970, 1, 1) + dt.timedelta(seconds=sec)).isoformat()
    if len(_ISO_SECONDS) > 10_000:
        _ISO_SECONDS.clear()
    _ISO_SECONDS[sec] = base
    return base


def _iso(ns: int) -> str:
    """``ns`` since the epoch as ISO 8601 (what ``datetime.isoformat()`` writes) plus ``Z``."""
    sec, rem = divmod(ns // 1000, 1_000_000)
    base = _ISO_SECONDS.get(sec) or _iso_base(sec)
    return f"{base}.{rem:06d}Z" if rem else base + "Z"


class _Runs:
    """A column that is constant over runs of rows (resource and scope values)."""

    __slots__ = ("runs",)

    def __init__(self) -> None:
        self.runs: list[tuple[Any, int]] = []

    def add(self, value: Any, count: int) -> None:
        if count:
            self.runs.append((value, count))

    def expand(self) -> list[Any]:
        out: list[Any] = []
        for value, count in self.runs:
            out.extend([value] * count)
        return out


# Span columns that hold per-span values, in the order of the row tuples the walk builds; the
# four resource/scope columns are run-length columns and the promoted values come last.
_SPAN_ROW_COLUMNS = (
    "Timestamp", "TraceId", "SpanId", "ParentSpanId", "TraceState", "SpanName", "SpanKind",
    "SpanAttributes", "Duration", "StatusCode", "StatusMessage", "Events", "Links",
)  # fmt: skip
_SPAN_RUN_COLUMNS = ("ServiceName", "ResourceAttributes", "ScopeName", "ScopeVersion")


_WALK: Any = False  # the C walk once imported; None when the extension is not built
# The span columns the walks return (row columns, then the promoted ones) and their kinds.
_WALK_COLUMNS = (*_SPAN_ROW_COLUMNS, *SPAN_COLUMNS[SPAN_COLUMNS.index("adapter_hash") :])
_WALK_KINDS = b"".join(
    b"i" if COLUMN_KINDS[semconv.TABLE_SPANS].get(c) in ("ts", "int") else b"s" for c in _WALK_COLUMNS
)
_EVAL_KINDS = b"".join(
    {"ts": b"i", "int": b"i", "float": b"f"}.get(COLUMN_KINDS[semconv.TABLE_EVALUATIONS].get(c, ""), b"s")
    for c in EVAL_COLUMNS
)


_PROMOTED_KEYS = tuple(_PROMOTED_INDEX)  # in index order
_PROMOTED_KINDS = b"".join(b"i" if k in _INT_PROMOTED else b"s" for k in _PROMOTED_KEYS)


def _from_buffers(spec: tuple, typ: Any) -> Any:
    """An Arrow array over the buffers the C walk built (no copy)."""
    _kind, n, data, offsets, validity, nulls = spec
    storage = typ.storage_type if isinstance(typ, pa.BaseExtensionType) else typ
    bufs = [None if validity is None else pa.py_buffer(validity)]
    if offsets is not None:
        bufs.append(pa.py_buffer(offsets))
    bufs.append(pa.py_buffer(data))
    arr = pa.Array.from_buffers(storage, n, bufs, null_count=nulls)
    return pa.ExtensionArray.from_storage(typ, arr) if storage is not typ else arr


def _native_walk() -> Any:
    """The C walk, or None when it is not built or ``TRACE_PTUNE_COLLECTOR_WALK=python``."""
    global _WALK
    if _WALK is False:
        _WALK = None
        if os.environ.get("TRACE_PTUNE_COLLECTOR_WALK", "native").strip().lower() != "python":
            try:
                from trace_ptune.collector._otlpwalk import walk as _WALK
            except ImportError:  # no C compiler at install time: the Python walk does the same
                pass
    return _WALK


class TraceConverter:
    """Converts OTLP trace requests (bytes or messages); keeps attribute caches between calls."""

    def __init__(self) -> None:
        self.cache = _AttrCache()
        self._resources: dict[bytes, tuple[str | None, str]] = {}
        self._names: dict[str, str] = {}
        self._events: dict[tuple[str, tuple[bytes, ...]], tuple[str, Any]] = {}

    def _event(self, key: tuple[str, tuple[bytes, ...]]) -> tuple[str, Any]:
        """A span event's time-independent parts, cached by (name, serialized attributes): the
        JSON after its timestamp, and for an evaluation result the columns it fills (``_COMPLEX``
        when it carries attributes beyond name, score, label and explanation)."""
        name, raws = key
        frags = self.cache.frags(raws)
        tail = '","Name":' + _dumps(name) + ',"Attributes":{' + ",".join(frags) + "}}"
        score: Any = None
        if name == semconv.EVENT_EVALUATION_RESULT:
            attrs = dict(map(self.cache.kv.get, raws))
            if not attrs.keys() <= _SIMPLE_EVENT_KEYS:
                score = _COMPLEX
            else:
                ev = _event_eval_row(0, "", "", attrs, [None] * _N_PV, None)
                score = ev[5:9]  # name, score_value, score_label, explanation
        if len(self._events) > 50_000:
            self._events.clear()
        self._events[key] = (tail, score)
        return tail, score

    def _resource(self, raw: bytes) -> tuple[str | None, str]:
        got = self._resources.get(raw)
        if got is None:
            attrs = attributes(_parse_nested("Resource", raw).attributes)
            got = (_str(attrs.get(_SERVICE_NAME)), _dumps(attrs))
            if len(self._resources) > 1000:
                self._resources.clear()
            self._resources[raw] = got
        return got

    def convert(self, request: Any, batch: Batch | None = None) -> Batch:
        """Rows for ``spans``, ``evaluations`` and ``adapters`` from a request message."""
        return self.convert_bytes(request.SerializeToString(), batch)

    def convert_bytes(self, body: bytes, batch: Batch | None = None, native: bool | None = None) -> Batch:
        """Rows for ``spans``, ``evaluations`` and ``adapters`` from a protobuf request body.

        ``native`` picks the walk: the C extension (default when it is built) or the Python one.
        Both produce the same batch."""
        batch = batch or Batch()
        walk = _native_walk() if (native is None and pa is not None) or native else None
        if native and walk is None:
            raise RuntimeError("the C extension trace_ptune.collector._otlpwalk is not built")
        if walk is None:
            return self._finish(batch, *self._walk(body, batch))
        cache = self.cache
        try:
            cols, groups, eval_rows, eval_spans, rejected, bad_reason = walk(
                body, cache.frag, cache.prom, cache.kv, cache.miss, self._events, self._event,
                self._resource, _links_json, _eval_row, _note_adapter, batch.adapters, _COMPLEX,
                _N_PV, len(_PROMOTED), _EVAL_NAME_INDEX, _WALK_KINDS, _PROMOTED_KEYS, _PROMOTED_KINDS,
                _EVAL_KINDS,
            )  # fmt: skip
        except ValueError as exc:  # the wire format (callbacks raise MalformedPayload themselves)
            raise MalformedPayload(f"the body is not a valid OTLP spans protobuf message: {exc}") from None
        cols = [
            _from_buffers(spec, typ)
            for spec, typ in zip(cols, _column_types(semconv.TABLE_SPANS, _WALK_COLUMNS), strict=True)
        ]
        eval_types = _column_types(semconv.TABLE_EVALUATIONS, EVAL_COLUMNS)
        eval_rows = [_from_buffers(spec, typ) for spec, typ in zip(eval_rows, eval_types, strict=True)]
        runs = [_Runs() for _ in _SPAN_RUN_COLUMNS]
        for group in groups:
            for col, value in zip(runs, group[:4], strict=True):
                col.add(value, group[4])
        return self._finish(batch, cols, runs, eval_rows, eval_spans, rejected, bad_reason)

    def _walk(self, body: bytes, batch: Batch) -> tuple:
        """The Python walk: (span columns, run columns, evaluation rows, child-span evaluations,
        rejected count, reason); the C extension returns the same."""
        request = _parse_projection(body)
        rows: list[tuple] = []
        runs = [_Runs() for _ in _SPAN_RUN_COLUMNS]
        eval_rows: list[tuple] = []
        eval_spans: list[tuple[int, str | None]] = []  # (index in eval_rows, parent span id)
        adapters = batch.adapters
        seen: dict[str, tuple] = {}  # adapter hash -> identity values noted in this batch
        frags_of = self.cache.frags
        pget = self.cache.prom.get
        kvget = self.cache.kv.get
        ev_get = self._events.get
        ident_of = _IDENT_OF
        iso_seconds = _ISO_SECONDS
        pv_range = _PV_RANGE
        kinds = SPAN_KINDS
        statuses = STATUS_CODES
        eval_name_idx = _EVAL_NAME_INDEX
        rejected = 0
        bad_reason = ""
        for rs in request.resource_spans:
            service, res_json = self._resource(rs.resource)
            for ss in rs.scope_spans:
                scope = ss.scope
                n_group = len(rows)
                for s in ss.spans:
                    tid, sid = s.trace_id, s.span_id
                    if len(tid) != 16 or len(sid) != 8 or tid == _Z16 or sid == _Z8:
                        rejected += 1
                        bad_reason = f"span {s.name!r} has an invalid trace id or span id"
                        continue
                    psid = s.parent_span_id
                    if psid:
                        if len(psid) != 8:
                            rejected += 1
                            bad_reason = f"span {s.name!r} has an invalid parent span id"
                            continue
                        parent = "" if psid == _Z8 else psid.hex()
                    else:
                        parent = ""
                    trace_id = tid.hex()
                    span_id = sid.hex()
                    raws = list(s.attributes)  # bytes made (and hashed) once for all lookups
                    frags = frags_of(raws)
                    pv = list(map(dict(filter(None, map(pget, raws))).get, pv_range))
                    start = s.start_time_unix_nano
                    end = s.end_time_unix_nano
                    start_us = start // 1000
                    events_json = "[]"
                    evs = s.events
                    if evs:
                        parts = []
                        for e in evs:
                            eraws = tuple(e.attributes)
                            ekey = (e.name, eraws)
                            ent = ev_get(ekey)
                            if ent is None:
                                ent = self._event(ekey)
                            et = e.time_unix_nano
                            eus = et // 1000
                            sec = eus // 1_000_000
                            rem = eus - sec * 1_000_000
                            base = iso_seconds.get(sec) or _iso_base(sec)
                            parts.append('{"Timestamp":"' + base + (f".{rem:06d}Z" if rem else "Z") + ent[0])
                            score = ent[1]
                            if score is not None:  # gen_ai.evaluation.result
                                if score is _COMPLEX:
                                    eval_rows.append(
                                        _eval_row(
                                            (et or end) // 1000, trace_id, span_id, None, "span_event",
                                            dict(map(kvget, eraws)), pv, service,
                                        )
                                    )  # fmt: skip
                                else:
                                    eval_rows.append(
                                        ((et or end) // 1000, trace_id, span_id, None, "span_event",
                                         *score, pv[10], pv[0], pv[1], pv[3], pv[4], pv[5], pv[7], service, "{}")
                                    )  # fmt: skip
                        events_json = "[" + ",".join(parts) + "]"
                    links_json = "[]"
                    if s.links:
                        links_json = _links_json(s.links)
                    status = s.status
                    kind = s.kind
                    code = status.code
                    rows.append(
                        (
                            start_us,
                            trace_id,
                            span_id,
                            parent,
                            s.trace_state,
                            s.name,
                            kinds[kind] if 0 <= kind < 6 else "Unspecified",
                            "{" + ",".join(frags) + "}",
                            end - start if end >= start else 0,
                            statuses[code] if 0 <= code < 3 else "Unset",
                            status.message,
                            events_json,
                            links_json,
                            *pv,
                        )
                    )
                    if pv[eval_name_idx] is not None:
                        eval_spans.append((len(eval_rows), parent or None))
                        eval_rows.append(
                            _eval_row(
                                start_us,
                                trace_id,
                                parent or None,
                                span_id,
                                "span",
                                dict(map(kvget, raws)),
                                pv,
                                service,
                            )
                        )
                    h = pv[0]
                    if h is not None:
                        ident = ident_of(pv)
                        if seen.get(h) != ident:
                            seen[h] = ident
                            _note_adapter(adapters, h, ident, start_us)
                        else:
                            rec = adapters[h]
                            if start_us < rec[8]:
                                rec[8] = start_us
                            elif start_us > rec[9]:
                                rec[9] = start_us
                n = len(rows) - n_group
                if n:
                    for col, value in zip(runs, (service, res_json, scope.name, scope.version), strict=True):
                        col.add(value, n)
        cols = list(zip(*rows, strict=True))
        return cols, runs, eval_rows, eval_spans, rejected, bad_reason

    @staticmethod
    def _finish(
        batch: Batch,
        cols: list[Any],
        runs: list[_Runs],
        eval_rows: list[tuple],
        eval_spans: list[tuple[int, str | None]],
        rejected: int,
        bad_reason: str,
    ) -> Batch:
        n = len(cols[0]) if cols else 0
        eval_cols: list[Any] = []
        if eval_rows and pa is not None and isinstance(eval_rows[0], pa.Array):  # the C walk's columns
            n_eval = len(eval_rows[0])
            if n_eval and not eval_spans:  # nothing to fill: the columns go to the batch as they are
                eval_cols, eval_rows = eval_rows, []
            else:  # rare (evaluations sent as child spans): fill them row by row below
                ts = eval_rows[0].cast(pa.int64())  # rows keep timestamps as µs integers
                columns = [ts, *eval_rows[1:]]
                eval_rows = list(zip(*(a.to_pylist() for a in columns), strict=True)) if n_eval else []
        if eval_spans and n:
            # Child-span encoding: the scored span is the parent; fill from it when it is in this batch.
            if pa is not None and isinstance(cols[2], pa.Array):
                cols = [c.to_pylist() for c in cols]  # rare: evaluations sent as child spans
            pos = {span_id: j for j, span_id in enumerate(cols[2])}
            for idx, parent in eval_spans:
                j = pos.get(parent) if parent else None
                if j is not None:
                    eval_rows[idx] = _fill_from_span(eval_rows[idx], cols, j)
        if n:
            by_name = dict(zip(_SPAN_ROW_COLUMNS, cols, strict=False))
            by_name.update(zip(_SPAN_RUN_COLUMNS, runs, strict=True))
            by_name.update(zip(_PROMOTED_COLUMNS, cols[len(_SPAN_ROW_COLUMNS) :], strict=False))
            batch.add_columns(semconv.TABLE_SPANS, [by_name[c] for c in SPAN_COLUMNS], n)
        if eval_cols:
            batch.add_columns(semconv.TABLE_EVALUATIONS, eval_cols, len(eval_cols[0]))
        if eval_rows:
            batch.table(semconv.TABLE_EVALUATIONS).extend(eval_rows)
            # Span events score the span that carries them: already filled, nothing to wait for.
            for row in eval_rows:
                if row[4] == "span" and row[2] and any(row[i] is None for i in _EVAL_FILL_IDX):
                    batch.missing.add(row[2])
        batch.accepted += n
        batch.rejected += rejected
        if bad_reason:
            batch.error = (
                f"rejected {rejected} span(s): {bad_reason} "
                "(trace ids are 16 bytes, span ids 8 bytes, neither all zero)"
            )
        return batch


_PROMOTED_COLUMNS = SPAN_COLUMNS[SPAN_COLUMNS.index("adapter_hash") :]
# Index of each FILL_COLUMNS entry, and of response_id, in a walk row tuple.
_ROW_FILL_IDX = tuple(len(_SPAN_ROW_COLUMNS) + _PROMOTED_COLUMNS.index(c) for c in FILL_COLUMNS)
_ROW_RESPONSE_IDX = len(_SPAN_ROW_COLUMNS) + _PROMOTED_COLUMNS.index("response_id")


def _links_json(links: Any) -> str:
    out = []
    for raw in links:
        ln = _parse_nested("Link", raw)
        out.append(
            {
                "TraceId": ln.trace_id.hex(),
                "SpanId": ln.span_id.hex(),
                "TraceState": ln.trace_state,
                "Attributes": attributes(ln.attributes),
            }
        )
    return _dumps(out)


def convert_traces(request: Any, batch: Batch | None = None) -> Batch:
    """Rows for ``spans``, ``evaluations`` and ``adapters`` from an ``ExportTraceServiceRequest``."""
    return TraceConverter().convert(request, batch)


_EVAL_FILL_IDX = tuple(EVAL_COLUMNS.index(c) for c in FILL_COLUMNS)


def _eval_row(
    ts_us: int,
    trace_id: str | None,
    scored_span: str | None,
    eval_span: str | None,
    source: str,
    attrs: dict[str, Any],
    span_pv: list[Any] | None,
    service: str | None,
) -> tuple:
    """One ``evaluations`` row. ``span_pv`` are the promoted values of the span carrying the
    evaluation (span-event encoding: the scored span itself; child-span encoding: the evaluation
    span, whose own attributes may carry copies of the scored span's identity)."""
    fill = [_str(attrs.get(k)) for k in _EVAL_ATTR_FILL]
    response_id = _str(attrs.get(semconv.GEN_AI_RESPONSE_ID))
    if span_pv is not None:
        if response_id is None and source == "span_event":
            response_id = span_pv[10]
        # promoted order: hash, name, version, deployment, tenant, traffic, base name, fingerprint
        span_fill = (span_pv[0], span_pv[1], span_pv[3], span_pv[4], span_pv[5], span_pv[7])
        fill = [f if f is not None else s for f, s in zip(fill, span_fill, strict=True)]
    name = attrs.get(semconv.GEN_AI_EVALUATION_NAME)
    return (
        ts_us,
        trace_id,
        scored_span,
        eval_span,
        source,
        "" if name is None else str(name),
        _num(attrs.get(semconv.GEN_AI_EVALUATION_SCORE_VALUE)),
        _str(attrs.get(semconv.GEN_AI_EVALUATION_SCORE_LABEL)),
        _str(attrs.get(semconv.GEN_AI_EVALUATION_EXPLANATION)),
        response_id,
        *fill,
        service,
        _rest_json(attrs),
    )


_SIMPLE_EVENT_KEYS = frozenset(
    {
        semconv.GEN_AI_EVALUATION_NAME,
        semconv.GEN_AI_EVALUATION_SCORE_VALUE,
        semconv.GEN_AI_EVALUATION_SCORE_LABEL,
        semconv.GEN_AI_EVALUATION_EXPLANATION,
    }
)


def _event_eval_row(
    ts_us: int, trace_id: str, span_id: str, attrs: dict[str, Any], pv: list[Any], service: str | None
) -> tuple:
    """``_eval_row`` for a span event with only the evaluation's own attributes (the usual case):
    every identity column comes from the scored span that carries the event."""
    if not attrs.keys() <= _SIMPLE_EVENT_KEYS:
        return _eval_row(ts_us, trace_id, span_id, None, "span_event", attrs, pv, service)
    g = attrs.get
    name = g(semconv.GEN_AI_EVALUATION_NAME)
    score = g(semconv.GEN_AI_EVALUATION_SCORE_VALUE)
    label = g(semconv.GEN_AI_EVALUATION_SCORE_LABEL)
    expl = g(semconv.GEN_AI_EVALUATION_EXPLANATION)
    return (
        ts_us,
        trace_id,
        span_id,
        None,
        "span_event",
        name if type(name) is str else ("" if name is None else str(name)),
        score if type(score) is float else _num(score),
        label if label is None or type(label) is str else str(label),
        expl if expl is None or type(expl) is str else str(expl),
        pv[10],
        pv[0],
        pv[1],
        pv[3],
        pv[4],
        pv[5],
        pv[7],
        service,
        "{}",
    )


# Attributes that land in evaluation columns; ``Attributes`` keeps only the others.
_EVAL_COLUMN_KEYS = frozenset(
    {
        semconv.GEN_AI_EVALUATION_NAME,
        semconv.GEN_AI_EVALUATION_SCORE_VALUE,
        semconv.GEN_AI_EVALUATION_SCORE_LABEL,
        semconv.GEN_AI_EVALUATION_EXPLANATION,
        semconv.GEN_AI_RESPONSE_ID,
        *_EVAL_ATTR_FILL,
    }
)


def _rest_json(attrs: dict[str, Any]) -> str:
    rest = {k: v for k, v in attrs.items() if k not in _EVAL_COLUMN_KEYS}
    return _dumps(rest) if rest else "{}"


def _fill_from_span(erow: tuple, cols: list[Any], j: int) -> tuple:
    """An evaluation row with its missing identity columns taken from span ``j`` of ``cols``."""
    row = list(erow)
    for ei, si in zip(_EVAL_FILL_IDX, _ROW_FILL_IDX, strict=True):
        if row[ei] is None:
            row[ei] = cols[si][j]
    if row[9] is None:
        row[9] = cols[_ROW_RESPONSE_IDX][j]
    return tuple(row)


def _note_adapter(adapters: dict[str, list], h: str, ident: tuple, ts: int) -> None:
    """Merge one span's adapter identity (ADAPTER_COLUMNS order after the hash: name, version,
    parent, method, num_virtual_tokens, base model, fingerprint) into the batch's records."""
    rec = adapters.get(h)
    if rec is None:
        adapters[h] = [h, *ident, ts, ts]
        return
    for i, val in enumerate(ident, start=1):
        if val is not None and rec[i] is None:
            rec[i] = val
    if ts < rec[8]:
        rec[8] = ts
    elif ts > rec[9]:
        rec[9] = ts


# ---------------------------------------------------------------- logs


def convert_logs(request: Any, batch: Batch | None = None) -> Batch:
    """Rows for ``logs`` (and ``evaluations`` from ``gen_ai.evaluation.result`` log events)."""
    batch = batch or Batch()
    rows = batch.table(semconv.TABLE_LOGS)
    evals: list[tuple] = []
    rejected = 0
    for rl in request.resource_logs:
        res = _Resource(rl.resource)
        for sl in rl.scope_logs:
            scope_name = sl.scope.name
            for r in sl.log_records:
                tid, sid = r.trace_id, r.span_id
                if (tid and len(tid) != 16) or (sid and len(sid) != 8):
                    rejected += 1
                    continue
                trace_id = tid.hex() if tid and any(tid) else None
                span_id = sid.hex() if sid and any(sid) else None
                attrs = attributes(r.attributes)
                event_name = getattr(r, "event_name", "") or _str(attrs.get(_EVENT_NAME_ATTR)) or None
                ts = r.time_unix_nano or r.observed_time_unix_nano
                body = any_value(r.body) if r.HasField("body") else None
                rows.append(
                    (
                        ts // 1000,
                        r.observed_time_unix_nano // 1000 if r.observed_time_unix_nano else None,
                        trace_id,
                        span_id,
                        r.severity_text,
                        r.severity_number,
                        res.service,
                        res.json,
                        scope_name,
                        event_name,
                        _dumps(body),
                        _dumps(attrs),
                    )
                )
                if event_name == semconv.EVENT_EVALUATION_RESULT:
                    evals.append(
                        _eval_row(ts // 1000, trace_id, span_id, None, "log", attrs, None, res.service)
                    )
    if evals:
        batch.table(semconv.TABLE_EVALUATIONS).extend(evals)
        for row in evals:
            if row[2] and any(row[i] is None for i in _EVAL_FILL_IDX):
                batch.missing.add(row[2])
    batch.accepted += len(rows)
    batch.rejected += rejected
    if rejected:
        batch.error = f"rejected {rejected} log record(s) with an invalid trace id or span id"
    return batch


# ---------------------------------------------------------------- metrics

_TEMPORALITY = ("Unspecified", "Delta", "Cumulative")


def convert_metrics(request: Any, batch: Batch | None = None) -> Batch:
    """Rows for ``metrics``: one per data point of every point type."""
    batch = batch or Batch()
    rows = batch.table(semconv.TABLE_METRICS)
    for rm in request.resource_metrics:
        res = _Resource(rm.resource)
        for sm in rm.scope_metrics:
            scope_name = sm.scope.name
            for m in sm.metrics:
                kind = m.WhichOneof("data")
                if kind is None:
                    continue
                data = getattr(m, kind)
                head = (m.name, m.description, m.unit)
                temporality = (
                    _TEMPORALITY[data.aggregation_temporality]
                    if kind != "gauge" and kind != "summary"
                    else None
                )
                monotonic = data.is_monotonic if kind == "sum" else None
                for p in data.data_points:
                    value = count = total = lo = hi = buckets = bounds = None
                    if kind in ("gauge", "sum"):
                        which = p.WhichOneof("value")
                        value = float(getattr(p, which)) if which else None
                        mtype = "Gauge" if kind == "gauge" else "Sum"
                    elif kind == "histogram":
                        mtype = "Histogram"
                        count, total = p.count, p.sum if p.HasField("sum") else None
                        lo = p.min if p.HasField("min") else None
                        hi = p.max if p.HasField("max") else None
                        buckets, bounds = _dumps(list(p.bucket_counts)), _dumps(list(p.explicit_bounds))
                    elif kind == "exponential_histogram":
                        mtype = "ExponentialHistogram"
                        count, total = p.count, p.sum if p.HasField("sum") else None
                        lo = p.min if p.HasField("min") else None
                        hi = p.max if p.HasField("max") else None
                        buckets = _dumps(
                            {
                                "scale": p.scale,
                                "zero_count": p.zero_count,
                                "positive": {
                                    "offset": p.positive.offset,
                                    "bucket_counts": list(p.positive.bucket_counts),
                                },
                                "negative": {
                                    "offset": p.negative.offset,
                                    "bucket_counts": list(p.negative.bucket_counts),
                                },
                            }
                        )
                    elif kind == "summary":
                        mtype = "Summary"
                        count, total = p.count, p.sum
                        # Summary quantiles: ExplicitBounds holds the quantiles, BucketCounts their values.
                        bounds = _dumps([q.quantile for q in p.quantile_values])
                        buckets = _dumps([q.value for q in p.quantile_values])
                    else:  # pragma: no cover - future point types
                        continue
                    rows.append(
                        (
                            p.time_unix_nano // 1000,
                            p.start_time_unix_nano // 1000 if p.start_time_unix_nano else None,
                            res.service,
                            res.json,
                            scope_name,
                            *head,
                            mtype,
                            _dumps(attributes(p.attributes)),
                            value,
                            count,
                            total,
                            lo,
                            hi,
                            buckets,
                            bounds,
                            monotonic,
                            temporality,
                        )
                    )
    batch.accepted += len(rows)
    return batch
