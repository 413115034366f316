"""Where ``trace-ptune query`` reads from: a running collector's query API, or a DuckDB file.

Both run the same SQL. Resolution order (ARCHITECTURE, "Where things live"):

1. ``collector=URL`` (``--collector``), else ``$TRACE_PTUNE_COLLECTOR``;
2. ``db=PATH`` (``--db``): through its collector when ``<db>.collector.json`` names a live one,
   else the file opened read-only;
3. the default database (``trace_ptune.paths.default_db()``), with the same side-file rule.

The bearer token comes from ``token=`` (``--token``) or ``$TRACE_PTUNE_TOKEN``. DuckDB allows one
writing process per file, so while a collector owns the file every read goes through it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from trace_ptune import paths, semconv
from trace_ptune.errors import QueryError, TracePtuneError

Rows = list[tuple[Any, ...]]


class Source:
    """A read-only SQL endpoint over the collector's tables."""

    kind: str = ""
    location: str = ""

    def query(self, sql: str, params: Sequence[Any] = ()) -> tuple[list[str], Rows]:
        """Run one read-only statement; ``?`` placeholders take ``params`` in order."""
        raise NotImplementedError

    def dicts(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        """Like :meth:`query`, as one dict per row."""
        columns, rows = self.query(sql, params)
        return [dict(zip(columns, row, strict=True)) for row in rows]

    def close(self) -> None:
        """Release the connection."""

    def __enter__(self) -> Source:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.location}>"


class FileSource(Source):
    """A DuckDB file opened read-only, with file and network access closed for the SQL it runs."""

    kind = "file"

    def __init__(self, path: str | os.PathLike[str]) -> None:
        import duckdb

        self.path = Path(path).expanduser()
        self.location = str(self.path)
        if not self.path.exists():
            raise QueryError(
                f"No trace database at {self.path}; start a collector (`trace-ptune collector run`) "
                "or pass --db PATH or --collector URL."
            )
        if paths.is_foreign_file(self.path):
            raise QueryError(
                f"{self.path} is not a DuckDB database; pass the collector's .duckdb file as --db."
            )
        try:
            self._con = duckdb.connect(
                str(self.path),
                read_only=True,
                config={"enable_external_access": False},
            )
        except duckdb.IOException as exc:
            if "lock" in str(exc).lower():
                raise QueryError(
                    f"The database {self.path} is held by another process (a running collector?); "
                    "query through it with --collector URL or TRACE_PTUNE_COLLECTOR."
                ) from None
            raise QueryError(f"Cannot open the database {self.path}: {_first_line(exc)}.") from None
        except duckdb.Error as exc:
            raise QueryError(f"Cannot open the database {self.path}: {_first_line(exc)}.") from None
        self._con.execute("SET enable_progress_bar = false")
        self._con.execute("SET lock_configuration = true")

    def query(self, sql: str, params: Sequence[Any] = ()) -> tuple[list[str], Rows]:
        import duckdb

        try:
            cur = self._con.cursor()
            try:
                cur.execute(sql, list(params) if params else None)
                if cur.description is None:
                    return [], []
                columns = [d[0] for d in cur.description]
                return columns, cur.fetchall()
            finally:
                cur.close()
        except duckdb.Error as exc:
            raise QueryError(f"The query failed: {_first_line(exc)}.") from None

    def close(self) -> None:
        con = getattr(self, "_con", None)
        if con is not None:
            con.close()
            self._con = None  # type: ignore[assignment]


class CollectorSource(Source):
    """The query API of a running collector: ``POST {url}/v1/query`` with ``{"sql", "params"}``."""

    kind = "collector"

    def __init__(self, url: str, token: str | None = None, *, timeout: float = 60.0) -> None:
        self.url = url.rstrip("/")
        self.location = self.url
        self.token = token
        self.timeout = timeout
        self._client: Any = None
        try:
            from trace_ptune.collector.client import CollectorClient
        except ImportError:  # the collector package is optional on a query-only host
            CollectorClient = None
        if CollectorClient is not None:
            try:
                self._client = CollectorClient(self.url, token)
            except TypeError:
                self._client = None

    def query(self, sql: str, params: Sequence[Any] = ()) -> tuple[list[str], Rows]:
        params = [_json_param(p) for p in params]
        if self._client is not None:
            try:
                columns, rows = self._client.query(sql, params)
            except TracePtuneError:
                raise
            except Exception as exc:
                raise QueryError(
                    f"The collector at {self.url} failed the query: {_first_line(exc)}."
                ) from None
            return list(columns), [tuple(r) for r in rows]
        return self._post(sql, params)

    def _post(self, sql: str, params: list[Any]) -> tuple[list[str], Rows]:
        import urllib.error
        import urllib.request

        body = json.dumps({"sql": sql, "params": params}).encode()
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        req = urllib.request.Request(f"{self.url}/v1/query", data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                payload = json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            detail = _error_detail(exc.read())
            if exc.code in (401, 403):
                raise QueryError(
                    f"The collector at {self.url} refused the token (HTTP {exc.code}); "
                    "pass --token or set TRACE_PTUNE_TOKEN."
                ) from None
            raise QueryError(
                f"The collector at {self.url} refused the query (HTTP {exc.code}): {detail}"
            ) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise QueryError(
                f"Cannot reach the collector at {self.url} ({reason}); start it or pass --db PATH."
            ) from None
        return list(payload.get("columns", [])), [tuple(r) for r in payload.get("rows", [])]


def _json_param(value: Any) -> Any:
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return value


def _error_detail(raw: bytes) -> str:
    try:
        payload = json.loads(raw)
    except ValueError:
        return raw.decode(errors="replace").strip()[:200] or "no detail"
    if isinstance(payload, dict):
        for key in ("error", "message", "detail"):
            if isinstance(payload.get(key), str):
                return payload[key]
    return str(payload)[:200]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__).rstrip(".")


def side_file_url(db: Path) -> tuple[str | None, str | None]:
    """The query URL (and token, if recorded) of a live collector named by ``<db>.collector.json``."""
    info = paths.live_collector(db)
    if info is None:
        return None, None
    url = info["urls"].get("http")
    token = info.get("token") if isinstance(info.get("token"), str) else None
    return (url if isinstance(url, str) else None), token


def open_source(
    *,
    collector: str | None = None,
    db: str | os.PathLike[str] | None = None,
    token: str | None = None,
) -> Source:
    """Resolve the data source in the documented order and open it."""
    token = token or os.environ.get(semconv.ENV_TOKEN) or None
    url = collector or os.environ.get(semconv.ENV_COLLECTOR) or None
    if url:
        return CollectorSource(url, token)
    path = Path(db).expanduser() if db is not None else paths.default_db()
    live_url, side_token = side_file_url(path)
    if live_url:
        return CollectorSource(live_url, token or side_token)
    return FileSource(path)
