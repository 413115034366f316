"""Hand-built OTLP messages for collector tests."""

from __future__ import annotations

import os
import time

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from trace_ptune import semconv

ADAPTER = "sha256:" + "ab" * 32
FINGERPRINT = "sha256:" + "cd" * 32


def kv(key: str, value) -> KeyValue:
    if isinstance(value, bool):
        return KeyValue(key=key, value=AnyValue(bool_value=value))
    if isinstance(value, int):
        return KeyValue(key=key, value=AnyValue(int_value=value))
    if isinstance(value, float):
        return KeyValue(key=key, value=AnyValue(double_value=value))
    return KeyValue(key=key, value=AnyValue(string_value=value))


def generation_attrs(**extra) -> dict:
    attrs = {
        semconv.GEN_AI_OPERATION_NAME: "text_completion",
        semconv.GEN_AI_REQUEST_MODEL: "tiny-random",
        semconv.GEN_AI_USAGE_INPUT_TOKENS: 12,
        semconv.GEN_AI_USAGE_OUTPUT_TOKENS: 4,
        semconv.PTUNE_ADAPTER_HASH: ADAPTER,
        semconv.PTUNE_ADAPTER_NAME: "acme/support",
        semconv.PTUNE_ADAPTER_VERSION: 2,
        semconv.PTUNE_ADAPTER_METHOD: semconv.METHOD_PROMPT_TUNING,
        semconv.PTUNE_DEPLOYMENT: "acme/support@prod",
        semconv.PTUNE_TENANT: "acme",
        semconv.PTUNE_TRAFFIC: semconv.TRAFFIC_PRODUCTION,
        semconv.PTUNE_BASE_MODEL_FINGERPRINT: FINGERPRINT,
    }
    attrs.update(extra)
    return attrs


def span_request(spans: list[dict], service: str = "svc") -> ExportTraceServiceRequest:
    """``spans``: dicts with name, trace_id, span_id, parent (bytes), attrs, events."""
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    rs.resource.attributes.append(kv("service.name", service))
    ss = rs.scope_spans.add()
    ss.scope.name = "tests"
    now = time.time_ns()
    for sp in spans:
        s = ss.spans.add()
        s.name = sp.get("name", "text_completion tiny-random")
        s.trace_id = sp.get("trace_id", os.urandom(16))
        s.span_id = sp.get("span_id", os.urandom(8))
        if sp.get("parent"):
            s.parent_span_id = sp["parent"]
        s.kind = 3
        s.start_time_unix_nano = now
        s.end_time_unix_nano = now + 1_000_000
        s.attributes.extend(kv(k, v) for k, v in sp.get("attrs", {}).items())
        for ev_name, ev_attrs in sp.get("events", []):
            e = s.events.add()
            e.name = ev_name
            e.time_unix_nano = now + 500_000
            e.attributes.extend(kv(k, v) for k, v in ev_attrs.items())
    return req


def eval_log_request(
    trace_id: bytes, span_id: bytes, metric: str, score: float, **attrs
) -> ExportLogsServiceRequest:
    req = ExportLogsServiceRequest()
    rl = req.resource_logs.add()
    rl.resource.attributes.append(kv("service.name", "scorer"))
    rec = rl.scope_logs.add().log_records.add()
    rec.time_unix_nano = time.time_ns()
    rec.trace_id, rec.span_id = trace_id, span_id
    rec.event_name = semconv.EVENT_EVALUATION_RESULT
    rec.attributes.extend(
        [kv(semconv.GEN_AI_EVALUATION_NAME, metric), kv(semconv.GEN_AI_EVALUATION_SCORE_VALUE, score)]
        + [kv(k, v) for k, v in attrs.items()]
    )
    return req
