"""OTLP/gRPC receiver: TraceService, MetricsService and LogsService ``Export``.

A full write queue answers ``UNAVAILABLE`` (exporters retry with back-off), a malformed
payload ``INVALID_ARGUMENT``, a missing or wrong ``authorization: Bearer`` metadata entry
``UNAUTHENTICATED``. Like the HTTP receiver, the reply is sent after the commit.
"""

from __future__ import annotations

import concurrent.futures as cf
import hmac
from typing import Any

import grpc
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2_grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

from trace_ptune.collector.ingest import BadPayload, Ingestor
from trace_ptune.collector.store import QueueFull
from trace_ptune.errors import CollectorError


class _Base:
    signal = ""

    def __init__(self, ingestor: Ingestor, token: str | None, accepting: Any) -> None:
        self._ingestor, self._token, self._accepting = ingestor, token, accepting

    def Export(self, request: Any, context: grpc.ServicerContext) -> Any:
        if not self._accepting():
            context.abort(grpc.StatusCode.UNAVAILABLE, "the collector is shutting down; retry shortly")
        if self._token:
            meta = dict(context.invocation_metadata() or ())
            given = meta.get("authorization", "")
            if not hmac.compare_digest(str(given).encode(), f"Bearer {self._token}".encode()):
                context.abort(
                    grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token in 'authorization'"
                )
        try:
            if isinstance(request, bytes):  # trace requests arrive unparsed (see start_grpc)
                result = self._ingestor.export_bytes(self.signal, request, "proto")
            else:
                result = self._ingestor.export_message(self.signal, request)
        except BadPayload as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except QueueFull as exc:
            context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        except CollectorError as exc:
            context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        return result.response(self.signal)


class _Traces(_Base):
    signal = "spans"


class _Metrics(_Base, metrics_service_pb2_grpc.MetricsServiceServicer):
    signal = "metrics"


class _Logs(_Base, logs_service_pb2_grpc.LogsServiceServicer):
    signal = "logs"


def start_grpc(
    address: str,
    ingestor: Ingestor,
    token: str | None,
    accepting: Any,
    *,
    max_workers: int = 8,
    max_message: int,
) -> tuple[grpc.Server, int]:
    """Start the gRPC server on ``host:port``; return it and the bound port."""
    server = grpc.server(
        cf.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="trace-ptune-grpc"),
        options=[("grpc.max_receive_message_length", max_message), ("grpc.so_reuseport", 0)],
    )
    # TraceService/Export takes the serialized request as it came: the converter walks the bytes
    # (as on the HTTP path) instead of gRPC parsing them into messages to be serialized again.
    traces = _Traces(ingestor, token, accepting)
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "opentelemetry.proto.collector.trace.v1.TraceService",
                {
                    "Export": grpc.unary_unary_rpc_method_handler(
                        traces.Export,
                        request_deserializer=None,
                        response_serializer=trace_service_pb2.ExportTraceServiceResponse.SerializeToString,
                    )
                },
            ),
        )
    )
    metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(
        _Metrics(ingestor, token, accepting), server
    )
    logs_service_pb2_grpc.add_LogsServiceServicer_to_server(_Logs(ingestor, token, accepting), server)
    try:
        port = server.add_insecure_port(address)
    except RuntimeError:
        port = 0
    if not port:
        raise CollectorError(
            f"cannot listen for gRPC on {address}: the port is in use; pass --grpc with another port"
        )
    server.start()
    return server, port
