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
import json
from dataclasses import dataclass, field
from typing import Any

from trace_ptune import semconv

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
# "float", "bool", anything else is text.
COLUMN_KINDS: dict[str, dict[str, str]] = {
    semconv.TABLE_SPANS: {
        "Timestamp": "ts", "Duration": "int", "adapter_version": "int", "input_tokens": "int",
        "output_tokens": "int", "virtual_tokens": "int",
    },
    semconv.TABLE_EVALUATIONS: {"Timestamp": "ts", "score_value": "float"},
    semconv.TABLE_METRICS: {
        "Timestamp": "ts", "StartTimestamp": "ts", "Value": "float", "Count": "int", "Sum": "float",
        "Min": "float", "Max": "float", "IsMonotonic": "bool",
    },
    semconv.TABLE_LOGS: {"Timestamp": "ts", "ObservedTimestamp": "ts", "SeverityNumber": "int"},
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
# Index of each FILL_COLUMNS entry in a span row.
_SPAN_FILL_IDX = tuple(SPAN_COLUMNS.index(c) for c in FILL_COLUMNS)
_SPAN_RESPONSE_IDX = SPAN_COLUMNS.index("response_id")


@dataclass
class Batch:
    """Rows converted from one export request, ready for the writer."""

    rows: dict[str, list[tuple]] = field(default_factory=dict)
    adapters: dict[str, list] = field(default_factory=dict)  # hash -> ADAPTER_COLUMNS values
    accepted: int = 0  # spans / data points / log records accepted
    rejected: int = 0
    error: str = ""  # partial_success message
    missing: set[str] = field(default_factory=set)  # scored SpanIds whose evaluations lack columns

    def table(self, name: str) -> list[tuple]:
        rows = self.rows.get(name)
        if rows is None:
            rows = self.rows[name] = []
        return rows

    @property
    def size(self) -> int:
        return sum(len(r) for r in self.rows.values())


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


def _iso(ns: int) -> str:
    import datetime as dt

    return (dt.datetime(1970, 1, 1) + dt.timedelta(microseconds=ns // 1000)).isoformat() + "Z"


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
    if value is None:
        return None
    if isinstance(value, int):
        return value
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


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


class _AttrCache:
    """Serialized ``KeyValue`` bytes -> (key, raw value, JSON fragment, promoted index, promoted value).

    Most attribute values repeat across spans (model, adapter hash, tenant, token counts), so a
    span's attribute JSON is mostly a join of cached fragments: this halves the per-span cost of
    building a dict and dumping it. Bounded: cleared when it grows past ``limit`` entries.
    """

    def __init__(self, limit: int = 100_000) -> None:
        self.map: dict[bytes, tuple] = {}
        self.limit = limit

    def miss(self, kv: Any, raw: bytes) -> tuple:
        value = _scalar(kv.value)
        key = kv.key
        idx = _PROMOTED_INDEX.get(key, -1)
        conv = None
        if idx >= 0 and value is not None:
            conv = _int(value) if key in _INT_PROMOTED else _str(value)
        entry = (key, value, _dumps(key) + ":" + _dumps(value), idx, conv)
        if len(self.map) >= self.limit:
            self.map.clear()
        self.map[raw] = entry
        return entry


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
_INT_PROMOTED = _INT_PROMOTED | {semconv.PTUNE_ADAPTER_NUM_VIRTUAL_TOKENS}


def _scalar(v: Any) -> Any:
    which = v.WhichOneof("value")
    if which == "string_value":
        return v.string_value
    if which in ("int_value", "double_value", "bool_value"):
        return getattr(v, which)
    return any_value(v) if which else None


class TraceConverter:
    """Converts ``ExportTraceServiceRequest`` messages; keeps an attribute cache between calls."""

    def __init__(self) -> None:
        self.cache = _AttrCache()

    def _attrs(self, kvs: Any, pv: list[Any] | None) -> tuple[str, list[tuple]]:
        cache_get = self.cache.map.get
        miss = self.cache.miss
        entries = []
        for kv in kvs:
            raw = kv.SerializeToString()
            e = cache_get(raw)
            if e is None:
                e = miss(kv, raw)
            entries.append(e)
            if pv is not None and e[3] >= 0:
                pv[e[3]] = e[4]
        return "{" + ",".join([e[2] for e in entries]) + "}", entries

    def convert(self, request: Any, batch: Batch | None = None) -> Batch:
        """Rows for ``spans``, ``evaluations`` and ``adapters``."""
        batch = batch or Batch()
        span_rows = batch.table(semconv.TABLE_SPANS)
        n_before = len(span_rows)
        eval_rows: list[tuple] = []
        eval_spans: list[tuple[int, str | None]] = []  # (index in eval_rows, parent span id)
        adapters = batch.adapters
        attrs_of = self._attrs
        dumps = _dumps
        kinds = SPAN_KINDS
        statuses = STATUS_CODES
        n_promoted = len(_PROMOTED)
        eval_name_idx = _EVAL_NAME_INDEX
        rejected = 0
        bad_reason = ""
        for rs in request.resource_spans:
            res = _Resource(rs.resource)
            service, res_json = res.service, res.json
            for ss in rs.scope_spans:
                scope = ss.scope
                scope_name, scope_version = scope.name, scope.version
                for s in ss.spans:
                    tid, sid = s.trace_id, s.span_id
                    if len(tid) != 16 or len(sid) != 8 or not any(tid) or not any(sid):
                        rejected += 1
                        bad_reason = f"span {s.name!r} has an invalid trace id or span id"
                        continue
                    psid = s.parent_span_id
                    if psid and len(psid) != 8:
                        rejected += 1
                        bad_reason = f"span {s.name!r} has an invalid parent span id"
                        continue
                    trace_id = tid.hex()
                    span_id = sid.hex()
                    parent = psid.hex() if psid and any(psid) else ""
                    pv: list[Any] = [None] * (n_promoted + 4)
                    attrs_json, entries = attrs_of(s.attributes, pv)
                    is_eval_span = pv[eval_name_idx] is not None
                    extras = pv[n_promoted:]
                    del pv[n_promoted:]
                    start = s.start_time_unix_nano
                    end = s.end_time_unix_nano
                    events_json = "[]"
                    if s.events:
                        parts = []
                        for e in s.events:
                            ejson, eentries = attrs_of(e.attributes, None)
                            parts.append(
                                '{"Timestamp":"' + _iso(e.time_unix_nano) + '","Name":' + dumps(e.name)
                                + ',"Attributes":' + ejson + "}"
                            )  # fmt: skip
                            if e.name == semconv.EVENT_EVALUATION_RESULT:
                                eattrs = {x[0]: x[1] for x in eentries}
                                eval_rows.append(
                                    _eval_row(
                                        (e.time_unix_nano or end) // 1000,
                                        trace_id,
                                        span_id,
                                        None,
                                        "span_event",
                                        eattrs,
                                        pv,
                                        service,
                                    )
                                )
                        events_json = "[" + ",".join(parts) + "]"
                    links_json = "[]"
                    if s.links:
                        links_json = dumps(
                            [
                                {
                                    "TraceId": ln.trace_id.hex(),
                                    "SpanId": ln.span_id.hex(),
                                    "TraceState": ln.trace_state,
                                    "Attributes": attributes(ln.attributes),
                                }
                                for ln in s.links
                            ]
                        )
                    status = s.status
                    kind = s.kind
                    span_rows.append(
                        (
                            start // 1000,
                            trace_id,
                            span_id,
                            parent,
                            s.trace_state,
                            s.name,
                            kinds[kind] if 0 <= kind < 6 else "Unspecified",
                            service,
                            res_json,
                            scope_name,
                            scope_version,
                            attrs_json,
                            end - start if end >= start else 0,
                            statuses[status.code] if 0 <= status.code < 3 else "Unset",
                            status.message,
                            events_json,
                            links_json,
                            *pv,
                        )
                    )
                    if is_eval_span:
                        attrs = {x[0]: x[1] for x in entries}
                        eval_spans.append((len(eval_rows), parent or None))
                        eval_rows.append(
                            _eval_row(
                                start // 1000, trace_id, parent or None, span_id, "span", attrs, pv, service
                            )
                        )
                    h = pv[0]
                    if h:
                        _note_adapter(adapters, h, extras, pv, start // 1000)
        if eval_spans:
            # Child-span encoding: the scored span is the parent; fill from it when it is in this batch.
            by_id = {row[2]: row for row in span_rows}
            for idx, parent in eval_spans:
                prow = by_id.get(parent) if parent else None
                if prow is not None:
                    eval_rows[idx] = _fill_from_span(eval_rows[idx], prow)
        if eval_rows:
            batch.table(semconv.TABLE_EVALUATIONS).extend(eval_rows)
            # Span events score the span that carries them: already filled, nothing to wait for.
            for row in eval_rows:
                if row[4] == "span" and row[2] and any(row[i] is None for i in _EVAL_FILL_IDX):
                    batch.missing.add(row[2])
        batch.accepted += len(span_rows) - n_before
        batch.rejected += rejected
        if bad_reason:
            batch.error = (
                f"rejected {rejected} span(s): {bad_reason} "
                "(trace ids are 16 bytes, span ids 8 bytes, neither all zero)"
            )
        return batch


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


def _fill_from_span(erow: tuple, span_row: tuple) -> tuple:
    row = list(erow)
    for ei, si in zip(_EVAL_FILL_IDX, _SPAN_FILL_IDX, strict=True):
        if row[ei] is None:
            row[ei] = span_row[si]
    if row[9] is None:
        row[9] = span_row[_SPAN_RESPONSE_IDX]
    return tuple(row)


def _note_adapter(adapters: dict[str, list], h: str, extras: list[Any], pv: list[Any], ts: int) -> None:
    rec = adapters.get(h)
    # ADAPTER_COLUMNS order: hash, name, version, parent, method, num_virtual_tokens, base, fingerprint
    new = (pv[1], pv[2], extras[1], extras[2], extras[3], pv[6], pv[7])
    if rec is None:
        adapters[h] = [h, *new, ts, ts]
        return
    for i, val in enumerate(new, start=1):
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
