"""Every class of bad request gets the OTLP-specified answer and stores nothing wrong."""

from __future__ import annotations

import gzip
import json

import grpc
import pytest
from google.rpc import status_pb2
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcSpanExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpSpanExporter
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from tests.collector.conftest import PB, grpc_target, post
from tests.collector.otlp_data import span_request
from trace_ptune.collector.client import CollectorClient
from trace_ptune.errors import CollectorError

JS = {"Content-Type": "application/json"}


def _count(client) -> int:
    return client.query("SELECT count(*) FROM spans")[1][0][0]


def test_garbage_protobuf_is_400_with_a_status_body(collector, client):
    status, headers, body = post(collector.urls["http"] + "/v1/traces", b"\xff\xff\xff\x0fgarbage", PB)
    assert status == 400 and headers["Content-Type"] == "application/x-protobuf"
    st = status_pb2.Status.FromString(body)
    assert st.code == 3 and "not a valid OTLP" in st.message
    assert _count(client) == 0


@pytest.mark.parametrize("body", [b"{not json", b"[1, 2]", b'{"resourceSpans": 5}'])
def test_bad_json_is_400_with_a_json_status(collector, body):
    status, headers, out = post(collector.urls["http"] + "/v1/traces", body, JS)
    assert status == 400 and headers["Content-Type"] == "application/json"
    assert json.loads(out)["code"] == 3


def test_wrong_id_lengths_are_rejected_with_partial_success(collector, client):
    req = span_request([{"trace_id": b"\x01" * 8}, {"span_id": b"\x02" * 4}, {"trace_id": b"\x00" * 16}, {}])
    status, _, body = post(collector.urls["http"] + "/v1/traces", req.SerializeToString(), PB)
    assert status == 200
    resp = trace_service_pb2.ExportTraceServiceResponse.FromString(body)
    assert resp.partial_success.rejected_spans == 3
    assert "invalid" in resp.partial_success.error_message
    assert _count(client) == 1
    bad_hex = {"resourceSpans": [{"scopeSpans": [{"spans": [
        {"traceId": "zz" * 16, "spanId": "ab" * 8, "name": "x"},
        {"traceId": "ab" * 15, "spanId": "ab" * 8, "name": "y"},
    ]}]}]}  # fmt: skip
    status, _, body = post(collector.urls["http"] + "/v1/traces", json.dumps(bad_hex).encode(), JS)
    assert status == 200 and json.loads(body)["partialSuccess"]["rejectedSpans"] == "2"
    assert _count(client) == 1


def test_gzip_bodies_are_accepted_and_gzip_bombs_are_413(make_collector):
    c = make_collector(max_body_bytes=64 * 1024)
    url = c.urls["http"] + "/v1/traces"
    ok = gzip.compress(span_request([{}, {}]).SerializeToString())
    assert post(url, ok, {**PB, "Content-Encoding": "gzip"})[0] == 200
    bomb = gzip.compress(b"\0" * (50 * 1024 * 1024))  # ~50 KB that inflates to 50 MB
    assert len(bomb) < 64 * 1024
    status, _, body = post(url, bomb, {**PB, "Content-Encoding": "gzip"})
    assert status == 413 and "decompressed" in status_pb2.Status.FromString(body).message
    assert post(url, b"not gzip at all", {**PB, "Content-Encoding": "gzip"})[0] == 400
    assert post(url, ok, {**PB, "Content-Encoding": "br"})[0] == 415
    assert CollectorClient(c.urls["http"]).query("SELECT count(*) FROM spans")[1] == [[2]]


def test_oversized_body_is_413(make_collector):
    c = make_collector(max_body_bytes=10_000)
    req = span_request([{"attrs": {"big": "x" * 20_000}}])
    status, _, body = post(c.urls["http"] + "/v1/traces", req.SerializeToString(), PB)
    assert status == 413 and "limit" in status_pb2.Status.FromString(body).message


def test_other_content_types_are_415(collector):
    status, _, body = post(collector.urls["http"] + "/v1/traces", b"a=b", {"Content-Type": "text/plain"})
    assert status == 415
    assert "unsupported Content-Type" in status_pb2.Status.FromString(body).message


def test_empty_requests_get_valid_empty_responses(collector, client):
    for signal in ("traces", "metrics", "logs"):
        status, _, body = post(collector.urls["http"] + f"/v1/{signal}", b"", PB)
        assert status == 200 and body == b""
        status, _, body = post(collector.urls["http"] + f"/v1/{signal}", b"{}", JS)
        assert status == 200 and json.loads(body) == {}
    assert _count(client) == 0


def test_unknown_path_is_404(collector):
    assert post(collector.urls["http"] + "/v1/nothing", b"", PB)[0] == 404


def _export(exporter) -> None:
    tp = TracerProvider()
    tp.add_span_processor(SimpleSpanProcessor(exporter))
    with tp.get_tracer("t").start_as_current_span("authed"):
        pass
    tp.shutdown()


def test_token_is_required_when_configured(make_collector):
    c = make_collector(token="s3cret")
    url = c.urls["http"]
    body = span_request([{}]).SerializeToString()
    assert post(url + "/v1/traces", body, PB)[0] == 401
    assert post(url + "/v1/traces", body, {**PB, "Authorization": "Bearer wrong"})[0] == 401
    assert post(url + "/v1/traces", body, {**PB, "Authorization": "Bearer s3cret"})[0] == 200
    assert post(url + "/v1/query", b'{"sql": "SELECT 1"}', JS)[0] == 401
    with pytest.raises(CollectorError, match="refused the token"):
        CollectorClient(url, token="nope").query("SELECT 1")
    good = CollectorClient(url, token="s3cret")
    # real exporters with the headers OTEL_EXPORTER_OTLP_HEADERS would set
    _export(HttpSpanExporter(endpoint=url + "/v1/traces", headers={"Authorization": "Bearer s3cret"}))
    _export(
        GrpcSpanExporter(endpoint=grpc_target(c), insecure=True, headers={"authorization": "Bearer s3cret"})
    )
    assert good.query("SELECT count(*) FROM spans")[1] == [[3]]
    stub = trace_service_pb2_grpc.TraceServiceStub(grpc.insecure_channel(grpc_target(c)))
    with pytest.raises(grpc.RpcError) as err:
        stub.Export(span_request([{}]), timeout=10)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    # health and metrics stay open for probes
    assert (
        b"trace_ptune_collector_accepted_total"
        in __import__("urllib.request").request.urlopen(url + "/metrics").read()
    )


def test_without_a_token_no_auth_is_needed(collector):
    assert post(collector.urls["http"] + "/v1/traces", span_request([{}]).SerializeToString(), PB)[0] == 200


def test_grpc_garbage_is_invalid_argument_and_the_receiver_goes_on(collector):
    channel = grpc.insecure_channel(grpc_target(collector))
    export = channel.unary_unary("/opentelemetry.proto.collector.trace.v1.TraceService/Export")
    for garbage in (b"\x0a\x05\x12", b"\xff" * 12, span_request([{}]).SerializeToString()[:-3]):
        with pytest.raises(grpc.RpcError) as err:
            export(garbage, timeout=10)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "not a valid OTLP spans protobuf message" in err.value.details()
    stub = trace_service_pb2_grpc.TraceServiceStub(channel)
    stub.Export(span_request([{}, {}]), timeout=10)
    client = CollectorClient(collector.urls["http"])
    assert client.query("SELECT count(*) FROM spans")[1] == [[2]]
