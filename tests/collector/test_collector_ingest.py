"""Real OTLP exporters and hand-built payloads land in the DuckDB tables."""

from __future__ import annotations

import json
import logging
import os

import grpc
import pytest
from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter as GrpcLogExporter
from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter as GrpcMetricExporter
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcSpanExporter
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter as HttpLogExporter
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter as HttpMetricExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpSpanExporter
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc
from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from tests.collector.conftest import grpc_target, post, post_pb
from tests.collector.otlp_data import ADAPTER, FINGERPRINT, eval_log_request, generation_attrs, span_request
from trace_ptune import semconv


def _emit_spans(exporter) -> None:
    tp = TracerProvider(resource=Resource.create({"service.name": "ptune-serve"}))
    tp.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = tp.get_tracer("tests")
    with tracer.start_as_current_span("text_completion tiny-random", attributes=generation_attrs()) as span:
        span.add_event(
            semconv.EVENT_EVALUATION_RESULT,
            {semconv.GEN_AI_EVALUATION_NAME: "exact_match", semconv.GEN_AI_EVALUATION_SCORE_VALUE: 1.0},
        )
        with tracer.start_as_current_span(
            semconv.evaluation_span_name("length"),
            attributes={semconv.GEN_AI_EVALUATION_NAME: "length", semconv.GEN_AI_EVALUATION_SCORE_VALUE: 7},
        ):
            pass
    tp.shutdown()


def test_http_and_grpc_span_exporters_land_spans_evaluations_and_adapters(collector, client):
    _emit_spans(HttpSpanExporter(endpoint=collector.urls["http"] + "/v1/traces"))
    _emit_spans(GrpcSpanExporter(endpoint=grpc_target(collector), insecure=True))
    _, rows = client.query(
        "SELECT SpanName, ServiceName, adapter_hash, adapter_version, tenant, deployment, traffic, "
        "base_fingerprint, input_tokens, SpanKind, length(TraceId), length(SpanId) FROM spans ORDER BY SpanName"
    )
    assert len(rows) == 4
    gen = [r for r in rows if r[0].startswith("text_completion")]
    assert gen[0][1:10] == [
        "ptune-serve",
        ADAPTER,
        2,
        "acme",
        "acme/support@prod",
        "production",
        FINGERPRINT,
        12,
        "Internal",
    ]
    assert all(r[10] == 32 and r[11] == 16 for r in rows)
    _, evals = client.query(
        "SELECT source, name, score_value, e.adapter_hash, e.tenant, e.deployment, e.base_fingerprint, "
        "e.SpanId = s.SpanId FROM evaluations e JOIN spans s ON s.TraceId = e.TraceId "
        "AND s.SpanName LIKE 'text_completion%' ORDER BY source"
    )
    assert sorted((r[0], r[1], r[2]) for r in evals) == [
        ("span", "length", 7.0), ("span", "length", 7.0),
        ("span_event", "exact_match", 1.0), ("span_event", "exact_match", 1.0),
    ]  # fmt: skip
    # every encoding points at the generation span and carries its adapter identity
    assert all(r[3:] == [ADAPTER, "acme", "acme/support@prod", FINGERPRINT, True] for r in evals)
    _, adapters = client.query("SELECT adapter_hash, adapter_name, adapter_version, method FROM adapters")
    assert adapters == [[ADAPTER, "acme/support", 2, semconv.METHOD_PROMPT_TUNING]]


def test_metric_exporters_store_every_point_type(collector, client):
    for exporter in (
        HttpMetricExporter(endpoint=collector.urls["http"] + "/v1/metrics"),
        GrpcMetricExporter(endpoint=grpc_target(collector), insecure=True),
    ):
        reader = PeriodicExportingMetricReader(exporter, export_interval_millis=3_600_000)
        mp = MeterProvider(metric_readers=[reader], resource=Resource.create({"service.name": "m"}))
        meter = mp.get_meter("tests")
        meter.create_counter(semconv.METRIC_TOKEN_USAGE).add(5, {semconv.GEN_AI_TOKEN_TYPE: "input"})
        meter.create_histogram(semconv.METRIC_OPERATION_DURATION).record(0.25)
        meter.create_up_down_counter("queue").add(-2)
        meter.create_gauge("temperature").set(21.5)
        mp.shutdown()
    _, rows = client.query(
        "SELECT MetricName, MetricType, Value, Count, Sum, ServiceName FROM metrics ORDER BY MetricName, MetricType"
    )
    kinds = {(r[0], r[1]) for r in rows}
    assert kinds == {
        (semconv.METRIC_OPERATION_DURATION, "Histogram"),
        (semconv.METRIC_TOKEN_USAGE, "Sum"),
        ("queue", "Sum"),
        ("temperature", "Gauge"),
    }
    assert len(rows) == 8
    hist = next(r for r in rows if r[1] == "Histogram")
    assert hist[3] == 1 and hist[4] == 0.25 and hist[5] == "m"
    assert {r[2] for r in rows if r[0] == "temperature"} == {21.5}


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_log_exporters_store_logs_and_log_based_evaluations(collector, client):
    trace_id, span_id = os.urandom(16), os.urandom(8)
    for exporter in (
        HttpLogExporter(endpoint=collector.urls["http"] + "/v1/logs"),
        GrpcLogExporter(endpoint=grpc_target(collector), insecure=True),
    ):
        lp = LoggerProvider(resource=Resource.create({"service.name": "app"}))
        lp.add_log_record_processor(SimpleLogRecordProcessor(exporter))
        logger = logging.getLogger(f"tests.collector.{id(exporter)}")
        logger.propagate = False
        handler = LoggingHandler(logger_provider=lp)
        logger.addHandler(handler)
        logger.warning("hello %s", "world")
        logger.removeHandler(handler)
        lp.shutdown()
    _, rows = client.query("SELECT Body, SeverityText, ServiceName FROM logs")
    assert [json.loads(r[0]) for r in rows] == ["hello world", "hello world"]
    assert {r[2] for r in rows} == {"app"}
    # the log-event encoding of a score, sent before its scored span arrives
    log_req = eval_log_request(trace_id, span_id, "faithfulness", 0.25)
    assert post_pb(collector.urls["http"] + "/v1/logs", log_req) == 200
    _, ev = client.query("SELECT source, name, score_value, adapter_hash FROM evaluations")
    assert ev == [["log", "faithfulness", 0.25, None]]
    # the scored span arrives later: the evaluation is back-filled
    req = span_request([{"trace_id": trace_id, "span_id": span_id, "attrs": generation_attrs()}])
    assert post_pb(collector.urls["http"] + "/v1/traces", req) == 200
    _, ev = client.query(
        "SELECT adapter_hash, adapter_name, tenant, deployment, traffic, base_fingerprint, SpanId FROM evaluations"
    )
    assert ev == [
        [ADAPTER, "acme/support", "acme", "acme/support@prod", "production", FINGERPRINT, span_id.hex()]
    ]


def test_log_evaluation_after_its_span_is_filled_from_the_stored_span(collector, client):
    trace_id, span_id = os.urandom(16), os.urandom(8)
    url = collector.urls["http"]
    req = span_request([{"trace_id": trace_id, "span_id": span_id, "attrs": generation_attrs()}])
    assert post_pb(url + "/v1/traces", req) == 200
    assert post_pb(url + "/v1/logs", eval_log_request(trace_id, span_id, "em", 1.0)) == 200
    _, ev = client.query("SELECT source, adapter_hash, tenant, TraceId FROM evaluations")
    assert ev == [["log", ADAPTER, "acme", trace_id.hex()]]


def test_child_span_evaluation_whose_parent_arrives_later_is_back_filled(collector, client):
    url = collector.urls["http"]
    trace_id, parent = os.urandom(16), os.urandom(8)
    child = span_request(
        [{"name": "evaluation em", "trace_id": trace_id, "parent": parent,
          "attrs": {semconv.GEN_AI_EVALUATION_NAME: "em", semconv.GEN_AI_EVALUATION_SCORE_VALUE: 0.5}}]
    )  # fmt: skip
    assert post_pb(url + "/v1/traces", child) == 200
    _, ev = client.query("SELECT adapter_hash FROM evaluations")
    assert ev == [[None]]
    scored = span_request([{"trace_id": trace_id, "span_id": parent, "attrs": generation_attrs()}])
    assert post_pb(url + "/v1/traces", scored) == 200
    _, ev = client.query("SELECT source, SpanId, adapter_hash, tenant FROM evaluations")
    assert ev == [["span", parent.hex(), ADAPTER, "acme"]]


def test_json_payload_with_hex_ids_keeps_the_ids(collector, client):
    trace_hex, span_hex = "5b8efff798038103d269b633813fc60c", "eee19b7ec3c1b174"
    body = {
        "resourceSpans": [{
            "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "json-svc"}}]},
            "scopeSpans": [{"scope": {"name": "s"}, "spans": [{
                "traceId": trace_hex, "spanId": span_hex, "parentSpanId": "",
                "name": "op", "kind": 2, "startTimeUnixNano": "1700000000000000000",
                "endTimeUnixNano": "1700000000500000000",
                "attributes": [{"key": semconv.PTUNE_TENANT, "value": {"stringValue": "acme"}},
                               {"key": semconv.GEN_AI_USAGE_INPUT_TOKENS, "value": {"intValue": "9"}}],
                "events": [{"name": semconv.EVENT_EVALUATION_RESULT, "timeUnixNano": "1700000000400000000",
                            "attributes": [{"key": semconv.GEN_AI_EVALUATION_NAME, "value": {"stringValue": "em"}},
                                           {"key": semconv.GEN_AI_EVALUATION_SCORE_VALUE, "value": {"doubleValue": 0.5}}]}],
            }]}],
        }]
    }  # fmt: skip
    status, headers, out = post(
        collector.urls["http"] + "/v1/traces", json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    assert status == 200 and headers["Content-Type"] == "application/json"
    assert json.loads(out) == {}
    _, rows = client.query(
        "SELECT TraceId, SpanId, SpanKind, tenant, input_tokens, Duration, Timestamp FROM spans"
    )
    assert rows == [[trace_hex, span_hex, "Server", "acme", 9, 500_000_000, "2023-11-14T22:13:20Z"]]
    _, ev = client.query("SELECT SpanId, name, score_value, tenant FROM evaluations")
    assert ev == [[span_hex, "em", 0.5, "acme"]]


def test_grpc_export_of_invalid_ids_reports_partial_success(collector, client):
    channel = grpc.insecure_channel(grpc_target(collector))
    stub = trace_service_pb2_grpc.TraceServiceStub(channel)
    req = span_request([{"trace_id": b"\x01" * 15}, {}])
    resp = stub.Export(req, timeout=10)
    channel.close()
    assert resp.partial_success.rejected_spans == 1
    assert "invalid trace id" in resp.partial_success.error_message
    assert client.query("SELECT count(*) FROM spans")[1] == [[1]]
