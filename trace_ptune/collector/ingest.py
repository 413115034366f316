"""Decode OTLP payloads (protobuf or JSON), convert them, and hand them to the store.

Shared by the HTTP and gRPC receivers. ``Ingestor.export`` returns only after the rows are
committed, so a receiver that acknowledges after it returns never acknowledges lost data.
With ``workers > 0`` decoding and conversion run in worker processes (the GIL-bound part of
ingestion), and the single writer only inserts.
"""

from __future__ import annotations

import base64
import binascii
import concurrent.futures as cf
import json
import multiprocessing
import threading
from dataclasses import dataclass
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

from trace_ptune.collector import otlp
from trace_ptune.collector.store import Store
from trace_ptune.errors import CollectorError

SIGNALS = ("spans", "metrics", "logs")
REQUEST_TYPES = {
    "spans": trace_service_pb2.ExportTraceServiceRequest,
    "metrics": metrics_service_pb2.ExportMetricsServiceRequest,
    "logs": logs_service_pb2.ExportLogsServiceRequest,
}
RESPONSE_TYPES = {
    "spans": trace_service_pb2.ExportTraceServiceResponse,
    "metrics": metrics_service_pb2.ExportMetricsServiceResponse,
    "logs": logs_service_pb2.ExportLogsServiceResponse,
}
_REJECTED_FIELD = {
    "spans": "rejected_spans",
    "metrics": "rejected_data_points",
    "logs": "rejected_log_records",
}
_ID_KEYS = frozenset({"traceId", "spanId", "parentSpanId", "trace_id", "span_id", "parent_span_id"})


BadPayload = otlp.MalformedPayload  # HTTP 400, gRPC INVALID_ARGUMENT


@dataclass
class ExportResult:
    accepted: int
    rejected: int
    message: str

    def response(self, signal: str) -> Any:
        """The ``Export*ServiceResponse`` (with ``partial_success`` when something was rejected)."""
        resp = RESPONSE_TYPES[signal]()
        if self.rejected or self.message:
            setattr(resp.partial_success, _REJECTED_FIELD[signal], self.rejected)
            resp.partial_success.error_message = self.message
        return resp


def _hex_to_b64(node: Any) -> None:
    """OTLP/JSON ids are hex, but protobuf's JSON mapping reads bytes as base64: convert in place.

    An id that is not valid hex becomes empty, so the converter rejects that span (partial
    success) instead of storing a wrong id.
    """
    if isinstance(node, dict):
        for key, value in node.items():
            if key in _ID_KEYS and isinstance(value, str):
                try:
                    node[key] = base64.b64encode(bytes.fromhex(value)).decode() if value else ""
                except ValueError:
                    node[key] = base64.b64encode(b"\x00").decode()  # wrong length: rejected later
            elif isinstance(value, dict | list):
                _hex_to_b64(value)
    elif isinstance(node, list):
        for value in node:
            if isinstance(value, dict | list):
                _hex_to_b64(value)


def decode(signal: str, body: bytes, fmt: str) -> Any:
    """Parse an OTLP request body (``fmt`` is ``"proto"`` or ``"json"``)."""
    msg = REQUEST_TYPES[signal]()
    if not body:
        return msg
    if fmt == "json":
        try:
            data = json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise BadPayload(f"the body is not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise BadPayload(
                "the JSON body must be an object with resourceSpans/resourceMetrics/resourceLogs"
            )
        _hex_to_b64(data)
        try:
            json_format.ParseDict(data, msg, ignore_unknown_fields=True)
        except (json_format.ParseError, binascii.Error, TypeError, ValueError) as exc:
            raise BadPayload(f"the JSON body is not a valid OTLP {signal} request: {exc}") from None
        return msg
    try:
        msg.ParseFromString(body)
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise BadPayload(f"the body is not a valid OTLP {signal} protobuf message: {exc}") from None
    return msg


class _Converters:
    """One converter set per process (the trace converter keeps an attribute cache)."""

    def __init__(self) -> None:
        self.traces = otlp.TraceConverter()
        self.lock = threading.Lock()

    def convert(self, signal: str, msg: Any) -> otlp.Batch:
        """A parsed request message as a frozen batch."""
        if signal == "spans":
            return self.traces.convert(msg).freeze()
        if signal == "metrics":
            return otlp.convert_metrics(msg).freeze()
        return otlp.convert_logs(msg).freeze()

    def convert_body(self, signal: str, body: bytes, fmt: str) -> otlp.Batch:
        """An encoded request as a frozen batch (protobuf spans take the projection fast path)."""
        if signal == "spans" and fmt == "proto":
            return self.traces.convert_bytes(body).freeze()
        return self.convert(signal, decode(signal, body, fmt))


_WORKER: _Converters | None = None


def _worker_convert(signal: str, body: bytes, fmt: str) -> otlp.Batch:
    global _WORKER
    if _WORKER is None:
        _WORKER = _Converters()
    return _WORKER.convert_body(signal, body, fmt)


class Ingestor:
    """Decode, convert, queue, wait for the commit."""

    def __init__(self, store: Store, *, workers: int = 0, commit_timeout: float = 60.0) -> None:
        self.store = store
        self.commit_timeout = commit_timeout
        self._conv = _Converters()
        self._pool: cf.ProcessPoolExecutor | None = None
        if workers > 0:
            ctx = multiprocessing.get_context("spawn")
            self._pool = cf.ProcessPoolExecutor(max_workers=workers, mp_context=ctx)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def export_bytes(self, signal: str, body: bytes, fmt: str) -> ExportResult:
        """Store an encoded request; raise ``BadPayload``, ``QueueFull`` or ``CollectorError``."""
        with self.store.converting():
            if self._pool is not None and body:
                try:
                    batch = self._pool.submit(_worker_convert, signal, body, fmt).result()
                except cf.process.BrokenProcessPool as exc:  # pragma: no cover - worker crashed
                    raise CollectorError(f"a parsing worker died: {exc}") from None
            else:
                with self.store.cpu_gate:
                    batch = self._conv.convert_body(signal, body, fmt)
        return self._store(signal, batch)

    def export_message(self, signal: str, msg: Any) -> ExportResult:
        """Store an already-parsed request message (the gRPC path)."""
        with self.store.converting(), self.store.cpu_gate:
            batch = self._conv.convert(signal, msg)
        return self._store(signal, batch)

    def _store(self, signal: str, batch: otlp.Batch) -> ExportResult:
        ticket = self.store.submit(batch, signal)
        ticket.wait(self.commit_timeout)
        return ExportResult(batch.accepted, batch.rejected, batch.error)
