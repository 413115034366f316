"""OTLP/HTTP receiver, query API, health and Prometheus metrics on a threaded stdlib server.

Routes (``POST`` unless noted):

- ``/v1/traces``, ``/v1/metrics``, ``/v1/logs``: OTLP, ``application/x-protobuf`` or
  ``application/json``, optionally gzip. 400 with a ``google.rpc.Status`` body for a malformed
  payload, 413 when the body (or its decompressed size) is over the limit, 415 for another
  content type or encoding, 429 with ``Retry-After`` when the write queue is full, 503 while
  shutting down. The response is sent only after the rows are committed.
- ``/v1/query``: ``{"sql": ..., "params": [...]}`` -> ``{"columns", "types", "rows"}``, or an
  Arrow IPC stream with ``Accept: application/vnd.apache.arrow.stream``. Read-only SQL only.
- ``/v1/admin/compact`` and ``/v1/admin/export`` (``{"dir": ...}``): maintenance.
- ``GET /health`` and ``GET /metrics`` (Prometheus text format; no token needed).

With a token configured every POST needs ``Authorization: Bearer <token>`` (401 otherwise).
"""

from __future__ import annotations

import hmac
import json
import logging
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from google.protobuf import json_format
from google.rpc import code_pb2, status_pb2

from trace_ptune.collector import reads
from trace_ptune.collector.ingest import BadPayload, Ingestor
from trace_ptune.collector.store import QueueFull, Store, compact_running, export_parquet
from trace_ptune.errors import CollectorError, QueryError

log = logging.getLogger(__name__)

PROTOBUF = "application/x-protobuf"
JSON = "application/json"
ARROW = "application/vnd.apache.arrow.stream"
_PATHS = {"/v1/traces": "spans", "/v1/metrics": "metrics", "/v1/logs": "logs"}
_GRPC_CODE = {
    400: code_pb2.INVALID_ARGUMENT,
    401: code_pb2.UNAUTHENTICATED,
    404: code_pb2.NOT_FOUND,
    413: code_pb2.RESOURCE_EXHAUSTED,
    415: code_pb2.INVALID_ARGUMENT,
    429: code_pb2.RESOURCE_EXHAUSTED,
    500: code_pb2.INTERNAL,
    503: code_pb2.UNAVAILABLE,
}


class HttpError(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


class CollectorHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = False
    request_queue_size = 128

    def __init__(
        self,
        address: tuple[str, int],
        *,
        store: Store,
        ingestor: Ingestor,
        token: str | None,
        max_body: int,
        metrics_text: Any,
        query_timeout: float | None = reads.DEFAULT_TIMEOUT_S,
    ) -> None:
        self.store, self.ingestor, self.token = store, ingestor, token
        self.query_timeout = query_timeout
        self.max_body = max_body
        self.metrics_text = metrics_text
        self.accepting = True
        super().__init__(address, _Handler)


class _Handler(BaseHTTPRequestHandler):
    server: CollectorHTTPServer
    protocol_version = "HTTP/1.1"
    server_version = "trace-ptune-collector"
    # Headers and body leave in two writes; with Nagle's algorithm the small body waits for the
    # client's (delayed) ACK of the headers, up to 40 ms per request on Linux.
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)

    # ------------------------------------------------------------ plumbing

    def _send(self, status: int, body: bytes, ctype: str, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def _send_error_status(self, err: HttpError, as_json: bool) -> None:
        status = status_pb2.Status(code=_GRPC_CODE.get(err.status, code_pb2.UNKNOWN), message=err.message)
        if as_json:
            body = json.dumps({"code": status.code, "message": status.message, "details": []}).encode()
            self._send(err.status, body, JSON, err.headers)
        else:
            self._send(err.status, status.SerializeToString(), PROTOBUF, err.headers)

    def _check_auth(self) -> None:
        token = self.server.token
        if not token:
            return
        given = self.headers.get("Authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            raise HttpError(401, "missing or wrong bearer token; send 'Authorization: Bearer <token>'")

    def _read_body(self) -> bytes:
        limit = self.server.max_body
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked(limit)
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            raise HttpError(400, "the Content-Length header is not a number") from None
        if length > limit:
            self.close_connection = True  # do not read a body we refuse
            raise HttpError(
                413, f"the body is {length} bytes, over the {limit}-byte limit; send smaller batches"
            )
        return self.rfile.read(length) if length else b""

    def _read_chunked(self, limit: int) -> bytes:
        parts, total = [], 0
        while True:
            line = self.rfile.readline(65537)
            try:
                size = int(line.split(b";")[0].strip() or b"0", 16)
            except ValueError:
                self.close_connection = True
                raise HttpError(400, "malformed chunked transfer encoding") from None
            if size == 0:
                while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                    pass
                return b"".join(parts)
            total += size
            if total > limit:
                self.close_connection = True
                raise HttpError(413, f"the body is over the {limit}-byte limit; send smaller batches")
            parts.append(self.rfile.read(size))
            self.rfile.readline(3)

    def _decompress(self, body: bytes) -> bytes:
        encoding = (self.headers.get("Content-Encoding") or "identity").strip().lower()
        if encoding in ("", "identity") or not body:
            return body
        if encoding not in ("gzip", "deflate"):
            raise HttpError(415, f"unsupported Content-Encoding {encoding!r}; use gzip or none")
        limit = self.server.max_body
        wbits = 16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS
        d = zlib.decompressobj(wbits)
        try:
            out = d.decompress(body, limit + 1)
        except zlib.error as exc:
            raise HttpError(400, f"the {encoding} body is corrupt: {exc}") from None
        if len(out) > limit or d.unconsumed_tail:
            raise HttpError(
                413, f"the decompressed body is over the {limit}-byte limit; send smaller batches"
            )
        return out

    # ------------------------------------------------------------ routes

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/health":
            st = self.server.store
            body = {
                "status": "ok" if self.server.accepting else "draining",
                "schema_version": st.schema_version,
                "queue_rows": st.queue_rows,
            }
            self._send(200, json.dumps(body).encode(), JSON)
        elif path == "/metrics":
            self._send(200, self.server.metrics_text().encode(), "text/plain; version=0.0.4; charset=utf-8")
        else:
            self._send_error_status(HttpError(404, f"no such path {path}; try /health"), True)

    def do_POST(self) -> None:
        path = self.path.split("?", 1)[0]
        ctype = (self.headers.get("Content-Type") or "").split(";", 1)[0].strip().lower()
        as_json = ctype == JSON or path not in _PATHS
        try:
            if not self.server.accepting:
                self.close_connection = True
                raise HttpError(503, "the collector is shutting down; retry shortly", {"Retry-After": "2"})
            if path in _PATHS:
                self._check_auth()
                self._otlp(_PATHS[path], ctype)
            elif path == "/v1/query":
                self._check_auth()
                self._query()
            elif path == "/v1/admin/compact":
                self._check_auth()
                self._read_body()
                before, after = compact_running(self.server.store)
                self._send(200, json.dumps({"bytes_before": before, "bytes_after": after}).encode(), JSON)
            elif path == "/v1/admin/export":
                self._check_auth()
                self._export()
            else:
                self._read_body()
                raise HttpError(404, f"no such path {path}; OTLP paths are /v1/traces, /v1/metrics, /v1/logs")
        except HttpError as err:
            self._send_error_status(err, as_json)
        except (TimeoutError, BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception as exc:  # a bug must not kill the server thread silently
            log.exception("request to %s failed", path)
            self._send_error_status(HttpError(500, f"internal error: {exc}"), as_json)

    def _otlp(self, signal: str, ctype: str) -> None:
        if ctype not in (PROTOBUF, JSON):
            self._read_body()
            raise HttpError(415, f"unsupported Content-Type {ctype or '(none)'!r}; use {PROTOBUF} or {JSON}")
        fmt = "json" if ctype == JSON else "proto"
        body = self._decompress(self._read_body())
        try:
            result = self.server.ingestor.export_bytes(signal, body, fmt)
        except BadPayload as exc:
            raise HttpError(400, str(exc)) from None
        except QueueFull as exc:
            raise HttpError(429, str(exc), {"Retry-After": "1"}) from None
        except CollectorError as exc:
            raise HttpError(503, str(exc), {"Retry-After": "2"}) from None
        resp = result.response(signal)
        if fmt == "json":
            out = json_format.MessageToJson(resp, indent=None).encode()
            self._send(200, out, JSON)
        else:
            self._send(200, resp.SerializeToString(), PROTOBUF)

    def _json_body(self) -> dict[str, Any]:
        raw = self._decompress(self._read_body())
        try:
            data = json.loads(raw or b"{}")
        except ValueError as exc:
            raise HttpError(400, f"the body is not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise HttpError(400, "the body must be a JSON object")
        return data

    def _query(self) -> None:
        data = self._json_body()
        sql, params = data.get("sql"), data.get("params") or []
        if not isinstance(sql, str) or not isinstance(params, list):
            raise HttpError(400, 'send {"sql": "<one SELECT>", "params": [...]}')
        want_arrow = ARROW in (self.headers.get("Accept") or "")
        interrupt = reads.Interrupt(self.server.query_timeout)
        t0 = time.perf_counter()
        try:
            run = reads.execute_arrow if want_arrow else reads.execute
            result = self.server.store.read(lambda cur: run(cur, sql, params, interrupt))
        except QueryError as exc:
            raise HttpError(400, str(exc)) from None
        finally:
            self.server.store.stats.count_query("http", time.perf_counter() - t0, interrupt.stopped)
        if want_arrow:
            self._send_arrow(result)
            return
        body = {
            "columns": result.columns,
            "types": result.types,
            "rows": [[reads.jsonable(v) for v in row] for row in result.rows],
        }
        self._send(200, json.dumps(body, separators=(",", ":")).encode(), JSON)

    def _send_arrow(self, table: Any) -> None:
        import pyarrow as pa

        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
        self._send(200, sink.getvalue().to_pybytes(), ARROW)

    def _export(self) -> None:
        data = self._json_body()
        directory = data.get("dir")
        if not isinstance(directory, str) or not directory:
            raise HttpError(400, 'send {"dir": "<directory on the collector host>"}')
        counts = self.server.store.read(lambda cur: export_parquet(cur, directory))
        self._send(200, json.dumps({"dir": directory, "rows": counts}).encode(), JSON)


def serve_in_thread(server: CollectorHTTPServer) -> threading.Thread:
    thread = threading.Thread(target=server.serve_forever, name="trace-ptune-http", daemon=True)
    thread.start()
    return thread
