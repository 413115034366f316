"""A small HTTP client for a running collector's query and admin API (stdlib only).

>>> client = CollectorClient("http://127.0.0.1:4318", token=None)   # doctest: +SKIP
>>> columns, rows = client.query("SELECT count(*) AS n FROM spans")  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from typing import Any

from trace_ptune import semconv
from trace_ptune.errors import CollectorError, QueryError


class CollectorClient:
    """Talks to ``POST /v1/query`` (and the admin endpoints) of a collector."""

    # Above the collector's default --query-timeout (60 s), so a slow query ends with its message.
    def __init__(self, url: str, token: str | None = None, *, timeout: float = 120.0) -> None:
        if not url.startswith(("http://", "https://")):
            raise CollectorError(
                f"the collector URL {url!r} is not an http(s) URL; pass one like http://127.0.0.1:4318"
            )
        self.url = url.rstrip("/")
        self.token = token if token is not None else os.environ.get(semconv.ENV_TOKEN) or None
        self.timeout = timeout

    def _post(self, path: str, payload: dict[str, Any], accept: str = "application/json") -> bytes:
        req = urllib.request.Request(
            self.url + path,
            data=json.dumps(payload).encode(),
            method="POST",
            headers={"Content-Type": "application/json", "Accept": accept},
        )
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return resp.read()
        except urllib.error.HTTPError as exc:
            message = _error_message(exc)
            if exc.code == 400:
                raise QueryError(message) from None
            if exc.code == 401:
                raise CollectorError(
                    f"the collector at {self.url} refused the token ({message}); pass --token or set TRACE_PTUNE_TOKEN"
                ) from None
            raise CollectorError(f"the collector at {self.url} answered {exc.code}: {message}") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise CollectorError(
                f"cannot reach the collector at {self.url} ({reason}); is it running?"
            ) from None

    def query_result(self, sql: str, params: list[Any] | None = None) -> dict[str, Any]:
        """The full JSON answer: ``{"columns": [...], "types": [...], "rows": [[...]]}``."""
        return json.loads(self._post("/v1/query", {"sql": sql, "params": list(params or [])}))

    def query(self, sql: str, params: list[Any] | None = None) -> tuple[list[str], list[list[Any]]]:
        """Run one read-only statement; return (column names, rows). Timestamps come back as ISO text."""
        data = self.query_result(sql, params)
        return data["columns"], data["rows"]

    def query_arrow(self, sql: str, params: list[Any] | None = None) -> Any:
        """The result as a ``pyarrow.Table`` (needs pyarrow)."""
        import pyarrow as pa

        body = self._post(
            "/v1/query", {"sql": sql, "params": list(params or [])}, "application/vnd.apache.arrow.stream"
        )
        return pa.ipc.open_stream(body).read_all()

    def compact(self) -> dict[str, Any]:
        """Copy-and-swap the database under the running writer; returns sizes before and after."""
        return json.loads(self._post("/v1/admin/compact", {}))

    def export_parquet(self, directory: str) -> dict[str, Any]:
        """Export every table as Parquet, partitioned by day, into ``directory`` on the collector's host."""
        return json.loads(self._post("/v1/admin/export", {"dir": directory}))

    def health(self) -> dict[str, Any]:
        try:
            with urllib.request.urlopen(self.url + "/health", timeout=self.timeout) as resp:
                return json.loads(resp.read())
        except (urllib.error.URLError, OSError) as exc:
            raise CollectorError(
                f"cannot reach the collector at {self.url} ({exc}); is it running?"
            ) from None


def _error_message(exc: urllib.error.HTTPError) -> str:
    try:
        body = exc.read()
        return str(json.loads(body).get("message") or body.decode(errors="replace"))
    except (ValueError, AttributeError, OSError):
        return exc.reason if isinstance(exc.reason, str) else str(exc)
