"""Decode OTLP payloads (protobuf or JSON), convert them, and hand them to the store.

Shared by the HTTP and gRPC receivers. ``Ingestor.export`` returns only after the rows are
committed, so a receiver that acknowledges after it returns never acknowledges lost data.
With ``workers > 0`` decoding and conversion run in worker processes fed over pipes (the
request's body goes out, Arrow IPC streams come back and are read in place), so conversions run
on other cores beside the single writer instead of taking turns with it.
"""

from __future__ import annotations

import base64
import binascii
import ctypes
import json
import multiprocessing
import os
import queue
import socket
import struct
import sys
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


def auto_workers() -> int:
    """``--workers auto``: one conversion worker per usable core, up to 4; none on a single core
    (the writer needs that core)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return min(cores, 4) if cores > 1 else 0


def tune_allocator() -> bool:
    """Keep freed memory in the process for reuse instead of handing it back at once (glibc).

    Each commit allocates and frees DuckDB's transaction-local blocks and each request its Arrow
    buffers; with glibc's defaults those large blocks are mapped and unmapped or trimmed every
    time, and each reuse pays page faults: ~7% of ingest throughput with conversion workers.
    Returns False (and changes nothing) off glibc or when ``MALLOC_*`` / ``GLIBC_TUNABLES`` set
    the allocator already.
    """
    if (
        sys.platform != "linux"
        or "GLIBC_TUNABLES" in os.environ
        or any(k.startswith("MALLOC_") for k in os.environ)
    ):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    return mallopt(m_mmap_threshold, 32 << 20) == 1 and mallopt(m_trim_threshold, 128 << 20) == 1


class _WorkerDied(CollectorError):
    """A conversion worker process exited; the request is answered with a retryable error."""


# What a worker sends back besides the tables: every field of a frozen Batch but its rows.
_BATCH_FIELDS = ("counts", "adapters", "accepted", "rejected", "error", "missing", "eval_min_ts")
_HEADER = struct.Struct("<QQ")  # lengths of the JSON head and of the payload after it


def _send(sock: socket.socket, head: Any, payload: list[Any]) -> None:
    """One message: a JSON head (plain values: nothing executable crosses the socket), then the
    payload buffers back to back."""
    meta = json.dumps(head, separators=(",", ":")).encode()
    sock.sendall(_HEADER.pack(len(meta), sum(memoryview(p).nbytes for p in payload)) + meta)
    for part in payload:
        sock.sendall(part)


def _recv_exact(sock: socket.socket, n: int) -> bytearray:
    """``n`` bytes read straight into one buffer (the interpreter lock is free while it waits)."""
    buf = bytearray(n)
    view, got = memoryview(buf), 0
    while got < n:
        k = sock.recv_into(view[got:], n - got)
        if not k:
            raise EOFError("the pipe closed")
        got += k
    return buf


def _recv(sock: socket.socket) -> tuple[Any, bytearray]:
    meta_len, payload_len = _HEADER.unpack(_recv_exact(sock, _HEADER.size))
    return json.loads(_recv_exact(sock, meta_len)), _recv_exact(sock, payload_len)


def _worker_main(conn: Any) -> None:  # pragma: no cover - runs in the worker process
    """A conversion worker: [signal, fmt] + body in; ["ok", batch fields, stream lengths] + one
    Arrow IPC stream per table out, or ("bad" | "error", message). Ends when the pipe closes."""
    import signal as _signal

    import pyarrow as pa

    # The collector decides when workers stop (it closes their socket after draining): Ctrl-C or
    # a SIGTERM sent to the whole process group must not fail the requests being converted.
    _signal.signal(_signal.SIGINT, _signal.SIG_IGN)
    _signal.signal(_signal.SIGTERM, _signal.SIG_IGN)
    tune_allocator()
    sock = socket.fromfd(conn.fileno(), socket.AF_UNIX, socket.SOCK_STREAM)
    conn.close()
    conv = _Converters()
    while True:
        try:
            (signal, fmt), body = _recv(sock)
        except (EOFError, OSError):
            return
        try:
            batch = conv.convert_body(signal, bytes(body), fmt)
        except BadPayload as exc:
            _send(sock, ("bad", str(exc), []), [])
            continue
        except Exception as exc:  # a converter bug must not kill the worker
            _send(sock, ("error", f"{type(exc).__name__}: {exc}", []), [])
            continue
        streams = []
        for tbl in batch.tables.values():
            sink = pa.BufferOutputStream()
            with pa.ipc.new_stream(sink, tbl.schema) as writer:
                writer.write_table(tbl)
            streams.append(sink.getvalue())
        fields = {name: getattr(batch, name) for name in _BATCH_FIELDS}
        fields["missing"] = sorted(batch.missing)
        _send(sock, ("ok", [list(batch.tables), fields], [s.size for s in streams]), streams)


class _Worker:
    """One conversion process and the socket to it, used by one request at a time."""

    def __init__(self, ctx: Any) -> None:
        conn, child = ctx.Pipe(duplex=True)
        self.proc = ctx.Process(target=_worker_main, args=(child,), name="trace-ptune-convert", daemon=True)
        self.proc.start()
        child.close()
        self.sock = socket.fromfd(conn.fileno(), socket.AF_UNIX, socket.SOCK_STREAM)
        conn.close()

    def convert(self, signal: str, body: bytes, fmt: str) -> otlp.Batch:
        import pyarrow as pa

        try:
            _send(self.sock, (signal, fmt), [body])
            (status, fields, lengths), payload = _recv(self.sock)
        except (EOFError, OSError) as exc:
            raise _WorkerDied(f"a conversion worker exited ({exc}); retry the request") from None
        if status == "bad":
            raise BadPayload(fields)
        if status == "error":
            raise CollectorError(f"the request could not be converted: {fields}")
        names, values = fields
        # the tables read the received buffer in place (no copy)
        buf, tables, start = pa.py_buffer(payload), {}, 0
        for name, n in zip(names, lengths, strict=True):
            tables[name] = pa.ipc.open_stream(buf.slice(start, n)).read_all()
            start += n
        values["missing"] = set(values["missing"])
        return otlp.Batch(tables=tables, **values)

    def close(self, timeout: float = 5.0) -> None:
        self.sock.close()
        self.proc.join(timeout)
        if self.proc.is_alive():  # pragma: no cover - a conversion stuck past shutdown
            self.proc.kill()
            self.proc.join(1.0)


class _WorkerPool:
    """Conversion worker processes fed over pipes.

    The request thread sends the body and reads the Arrow tables back; it waits on the pipe
    without the interpreter lock, so the writer's DuckDB work in this process is not held up by
    conversions (DuckDB's Python binding re-takes that lock many times per statement). A worker
    that dies is replaced; its request gets a retryable error.
    """

    def __init__(self, size: int) -> None:
        self._ctx = multiprocessing.get_context("spawn")
        self._idle: queue.SimpleQueue[_Worker] = queue.SimpleQueue()
        self._all: list[_Worker] = []
        self._lock = threading.Lock()
        self._closed = False
        self.restarts = 0  # workers replaced after they died
        for _ in range(size):
            self._add()

    @property
    def size(self) -> int:
        with self._lock:
            return len(self._all)

    def _add(self) -> None:
        w = _Worker(self._ctx)
        with self._lock:
            self._all.append(w)
        self._idle.put(w)

    def convert(self, signal: str, body: bytes, fmt: str) -> otlp.Batch:
        if self._closed:
            raise CollectorError("the collector is shutting down")
        while True:
            try:
                w = self._idle.get(timeout=1.0)
                break
            except queue.Empty:
                if self._closed:
                    raise CollectorError("the collector is shutting down") from None
        try:
            return w.convert(signal, body, fmt)
        except _WorkerDied:
            with self._lock:
                if w in self._all:
                    self._all.remove(w)
            w.close(0.1)
            w = None
            if not self._closed:
                self.restarts += 1
                self._add()
            raise
        finally:
            if w is not None:  # a refused body leaves the worker ready for the next request
                self._idle.put(w)

    def close(self) -> None:
        self._closed = True
        with self._lock:
            workers, self._all = self._all, []
        for w in workers:
            w.close()


class Ingestor:
    """Decode, convert, queue, wait for the commit."""

    def __init__(self, store: Store, *, workers: int = 0, commit_timeout: float = 60.0) -> None:
        self.store = store
        self.commit_timeout = commit_timeout
        self._conv = _Converters()
        self._pool = _WorkerPool(workers) if workers > 0 else None

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    @property
    def workers(self) -> int:
        """Conversion worker processes running (0: conversion in this process)."""
        return self._pool.size if self._pool is not None else 0

    @property
    def worker_restarts(self) -> int:
        return self._pool.restarts if self._pool is not None else 0

    def export_bytes(self, signal: str, body: bytes, fmt: str) -> ExportResult:
        """Store an encoded request; raise ``BadPayload``, ``QueueFull`` or ``CollectorError``."""
        with self.store.converting():
            if self._pool is not None and body:
                batch = self._pool.convert(signal, body, fmt)
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
