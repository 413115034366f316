"""The collector process: one store, the OTLP receivers, the query API and the Postgres endpoint.

>>> from trace_ptune.collector import Collector, CollectorConfig
>>> c = Collector(CollectorConfig(db="traces.duckdb", http="127.0.0.1:0", grpc=None)).start()
>>> c.urls["http"]            # doctest: +SKIP
'http://127.0.0.1:43117'
>>> c.stop()                  # drain, checkpoint, remove the side file

While it runs, ``<db>.collector.json`` beside the database names its URLs and pid, so
``trace-ptune query --db`` finds it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import json
import logging
import os
import re
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trace_ptune import paths
from trace_ptune.collector import otlp, reads
from trace_ptune.collector.http_server import CollectorHTTPServer, serve_in_thread
from trace_ptune.collector.ingest import Ingestor
from trace_ptune.collector.store import Store
from trace_ptune.errors import CollectorError, ConfigError

log = logging.getLogger(__name__)

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_UNIT = {"": 86400, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> float:
    """``30d``, ``12h``, ``90m``, ``45s``, ``2w`` (a bare number means days) -> seconds."""
    m = _DURATION.match(text or "")
    if not m:
        raise ConfigError(f"cannot read the duration {text!r}; use a number with s, m, h, d or w, e.g. 30d")
    return float(m.group(1)) * _UNIT[m.group(2)]


def parse_address(text: str, default_port: int) -> tuple[str, int]:
    """``host:port``, ``:port`` or ``port`` -> (host, port); the host defaults to loopback."""
    text = text.strip()
    host, _, port = text.rpartition(":") if ":" in text else ("", "", text)
    host = host.strip("[]") or "127.0.0.1"
    try:
        number = int(port) if port else default_port
    except ValueError:
        raise ConfigError(f"cannot read the address {text!r}; use host:port, e.g. 127.0.0.1:4318") from None
    if not 0 <= number <= 65535:
        raise ConfigError(
            f"the port in {text!r} is out of range; use a port from 0 to 65535, e.g. 127.0.0.1:4318"
        )
    return host, number


@dataclass
class CollectorConfig:
    """Options of ``trace-ptune collector run`` (one field per option)."""

    db: str | Path | None = None
    http: str | None = "127.0.0.1:4318"
    grpc: str | None = "127.0.0.1:4317"
    pg: str | None = None
    token: str | None = None
    pg_password: str | None = None
    retain: str | None = None
    max_body_bytes: int = 32 * 1024 * 1024
    max_queue_rows: int = 200_000
    workers: int = 0
    db_threads: int = 1  # DuckDB worker threads; 0: DuckDB's default (one per core)
    query_timeout: float | None = reads.DEFAULT_TIMEOUT_S  # seconds per query; None or 0: no limit
    quiet: bool = False

    def __post_init__(self) -> None:
        if self.db is None:
            self.db = paths.default_db()
        self.db = Path(self.db).expanduser()
        if self.http is None and self.grpc is None:
            raise ConfigError("at least one of --http and --grpc is needed to receive telemetry")
        if self.retain and parse_duration(self.retain) <= 0:
            raise ConfigError(
                f"--retain {self.retain!r} would delete every stored row; pass a positive duration, e.g. 30d"
            )
        if self.max_body_bytes <= 0 or self.max_queue_rows <= 0:
            raise ConfigError(
                f"--max-body-mb and --max-queue-rows must be positive (got {self.max_body_bytes} bytes "
                f"and {self.max_queue_rows} rows); pass values above 0"
            )
        if self.db_threads < 0:
            raise ConfigError(f"db_threads must be 0 (one per core) or more, not {self.db_threads}")
        if self.query_timeout is not None and not self.query_timeout >= 0:
            raise ConfigError(
                f"--query-timeout must be a positive duration or off, not {self.query_timeout!r}; e.g. 60s"
            )
        if self.workers < 0:
            raise ConfigError(f"workers must be 0 or more, not {self.workers}")


class Collector:
    """Owns the DuckDB file and every endpoint in front of it."""

    def __init__(self, config: CollectorConfig) -> None:
        self.config = config
        self.store: Store | None = None
        self.ingestor: Ingestor | None = None
        self.urls: dict[str, str] = {}
        self._http: CollectorHTTPServer | None = None
        self._grpc: Any = None
        self._pg: Any = None
        self._accepting = False
        self._stopped = threading.Event()
        self.started_at: str | None = None

    @property
    def db(self) -> Path:
        return Path(self.config.db)  # type: ignore[arg-type]

    def start(self) -> Collector:
        cfg = self.config
        retain = parse_duration(cfg.retain) if cfg.retain else None
        # Every address is read before the file is opened: a typo creates no database.
        http_addr = parse_address(cfg.http, 4318) if cfg.http else None
        grpc_addr = parse_address(cfg.grpc, 4317) if cfg.grpc else None
        pg_addr = parse_address(cfg.pg, 5433) if cfg.pg else None
        # With conversion workers the writer commits what is queued at once: the other requests
        # convert in the workers meanwhile, instead of the writer waiting for them to join.
        waits = {"group_wait_s": 0.0, "group_expect_s": 0.0} if cfg.workers else {}
        self.store = Store(
            self.db, max_queue_rows=cfg.max_queue_rows, retain_seconds=retain, threads=cfg.db_threads, **waits
        )
        try:
            self.ingestor = Ingestor(self.store, workers=cfg.workers)
            self._accepting = True
            if http_addr:
                host, port = http_addr
                try:
                    self._http = CollectorHTTPServer(
                        (host, port),
                        store=self.store,
                        ingestor=self.ingestor,
                        token=cfg.token,
                        max_body=cfg.max_body_bytes,
                        metrics_text=self.metrics_text,
                        query_timeout=cfg.query_timeout,
                    )
                except OSError as exc:
                    raise _bind_error("HTTP", cfg.http, "--http", exc) from None
                serve_in_thread(self._http)
                self.urls["http"] = f"http://{_url_host(host)}:{self._http.server_address[1]}"
            if grpc_addr:
                from trace_ptune.collector.grpc_server import start_grpc

                host, port = grpc_addr
                self._grpc, bound = start_grpc(
                    f"{_url_host(host)}:{port}",
                    self.ingestor,
                    cfg.token,
                    lambda: self._accepting,
                    max_message=cfg.max_body_bytes,
                )
                self.urls["grpc"] = f"http://{_url_host(host)}:{bound}"
            if pg_addr:
                from trace_ptune.collector.pgwire import PgServer

                host, port = pg_addr
                try:
                    self._pg = PgServer(
                        (host, port), self.store, password=cfg.pg_password, query_timeout=cfg.query_timeout
                    )
                except OSError as exc:
                    raise _bind_error("Postgres", cfg.pg, "--pg", exc) from None
                self._pg.serve_in_thread()
                self.urls["pg"] = f"postgresql://{_url_host(host)}:{self._pg.server_address[1]}/traces"
        except BaseException:
            self._shutdown_servers()
            if self.ingestor:
                self.ingestor.close()
            self.store.close()
            raise
        self.started_at = dt.datetime.now(dt.UTC).isoformat().replace("+00:00", "Z")
        self._write_side_file()
        return self

    def _write_side_file(self) -> None:
        side = paths.collector_side_file(self.db)
        info = {
            "urls": self.urls,
            "pid": os.getpid(),
            "started_at": self.started_at,
            "db": str(self.db),
            "auth": bool(self.config.token),
        }
        tmp = side.with_name(side.name + ".tmp")
        tmp.write_text(json.dumps(info, indent=2) + "\n")
        os.replace(tmp, side)

    def _shutdown_servers(self) -> None:
        self._accepting = False
        if self._http is not None:
            self._http.accepting = False
            self._http.shutdown()
            self._http.server_close()
        if self._grpc is not None:
            self._grpc.stop(grace=5).wait(10)
        if self._pg is not None:
            self._pg.shutdown()
            self._pg.server_close()

    def stop(self) -> None:
        """Stop accepting, let in-flight requests finish, drain the queue, checkpoint, close."""
        if self._stopped.is_set() or self.store is None:
            return
        self._stopped.set()
        self._shutdown_servers()
        if self.ingestor is not None:
            self.ingestor.close()
        self.store.close()
        with contextlib.suppress(OSError):
            side = paths.collector_side_file(self.db)
            info = json.loads(side.read_text())
            if info.get("pid") == os.getpid():
                side.unlink()

    def run(self, on_start: Callable[[Collector], None] | None = None, *, exiting: bool = False) -> None:
        """Start, then block until SIGTERM or SIGINT; shut down gracefully.

        The signal handlers are installed before the collector starts and stay until the drain
        is done, so a signal right after start, or a second one while draining (a supervisor
        signalling the whole process group, Ctrl-C pressed twice), cannot cut the drain short.
        ``on_start`` runs once the collector listens. ``exiting``: the process ends after this
        call, so SIGTERM and SIGINT are ignored after the drain and a late one cannot turn the
        clean exit into a kill; otherwise the previous handlers come back.
        """
        # The handler takes no lock: a signal can arrive while the main thread is inside the
        # handler (repeated signals) or inside any lock-holding call, and a threading.Event's
        # lock taken there again deadlocks. It counts and writes a byte to a pipe instead.
        signals: list[int] = []
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_w, False)

        def handler(signum: int, frame: Any) -> None:
            signals.append(signum)
            if len(signals) == 2:
                log.warning(
                    "%s while draining: the collector exits once the queue is stored",
                    signal.Signals(signum).name,
                )
            with contextlib.suppress(OSError):  # a full pipe: the main thread is awake already
                os.write(wake_w, b"\0")

        previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
        drained = False
        try:
            if self.store is None:
                self.start()
            if on_start is not None:
                on_start(self)
            while not signals:
                os.read(wake_r, 1)  # retried after each signal's handler (PEP 475)
        finally:
            try:
                self.stop()
                drained = bool(signals)
            finally:
                for s, h in previous.items():
                    # ignored rather than left to Python's handler, which interpreter shutdown
                    # resets to the default (terminate); a failed start puts them back
                    signal.signal(s, signal.SIG_IGN if exiting and drained else h)
                os.close(wake_r)
                os.close(wake_w)

    def __enter__(self) -> Collector:
        return self.start() if self.store is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------ self-observation

    def metrics_text(self) -> str:
        """Prometheus text exposition of the collector's own counters."""
        store = self.store
        assert store is not None
        st = store.stats
        lines = [
            "# HELP trace_ptune_collector_queue_rows Rows waiting for the writer.",
            "# TYPE trace_ptune_collector_queue_rows gauge",
            f"trace_ptune_collector_queue_rows {store.queue_rows}",
            "# HELP trace_ptune_collector_accepted_total Items committed, by signal.",
            "# TYPE trace_ptune_collector_accepted_total counter",
        ]
        lines += [f'trace_ptune_collector_accepted_total{{signal="{k}"}} {v}' for k, v in st.accepted.items()]
        lines += [
            "# HELP trace_ptune_collector_rejected_total Items refused as invalid (partial success), by signal.",
            "# TYPE trace_ptune_collector_rejected_total counter",
        ]
        lines += [f'trace_ptune_collector_rejected_total{{signal="{k}"}} {v}' for k, v in st.rejected.items()]
        lines += [
            "# HELP trace_ptune_collector_throttled_total Requests refused because the queue was full.",
            "# TYPE trace_ptune_collector_throttled_total counter",
            f"trace_ptune_collector_throttled_total {st.refused_full}",
            "# HELP trace_ptune_collector_evaluations_total Evaluation rows stored.",
            "# TYPE trace_ptune_collector_evaluations_total counter",
            f"trace_ptune_collector_evaluations_total {st.evaluations}",
            "# HELP trace_ptune_collector_write_errors_total Batches that could not be stored.",
            "# TYPE trace_ptune_collector_write_errors_total counter",
            f"trace_ptune_collector_write_errors_total {st.write_errors}",
            "# HELP trace_ptune_collector_commit_seconds Time to insert and commit one group of batches.",
            "# TYPE trace_ptune_collector_commit_seconds summary",
            f"trace_ptune_collector_commit_seconds_sum {st.commit_seconds_sum:.6f}",
            f"trace_ptune_collector_commit_seconds_count {st.commits}",
            "# HELP trace_ptune_collector_commit_seconds_max Slowest commit so far.",
            "# TYPE trace_ptune_collector_commit_seconds_max gauge",
            f"trace_ptune_collector_commit_seconds_max {st.commit_seconds_max:.6f}",
            "# HELP trace_ptune_collector_native_walk 1 when OTLP traces are converted by the C extension.",
            "# TYPE trace_ptune_collector_native_walk gauge",
            f"trace_ptune_collector_native_walk {int(otlp._native_walk() is not None)}",
            "# HELP trace_ptune_collector_workers Conversion worker processes (0: conversion in the collector process).",
            "# TYPE trace_ptune_collector_workers gauge",
            f"trace_ptune_collector_workers {self.ingestor.workers if self.ingestor else 0}",
            "# HELP trace_ptune_collector_worker_restarts_total Conversion workers replaced after they died.",
            "# TYPE trace_ptune_collector_worker_restarts_total counter",
            f"trace_ptune_collector_worker_restarts_total {self.ingestor.worker_restarts if self.ingestor else 0}",
            "# HELP trace_ptune_collector_queries_total User queries answered or refused, by endpoint.",
            "# TYPE trace_ptune_collector_queries_total counter",
            *(f'trace_ptune_collector_queries_total{{endpoint="{k}"}} {v}' for k, v in st.queries.items()),
            "# HELP trace_ptune_collector_queries_stopped_total User queries stopped, by reason.",
            "# TYPE trace_ptune_collector_queries_stopped_total counter",
            *(
                f'trace_ptune_collector_queries_stopped_total{{reason="{k}"}} {v}'
                for k, v in st.queries_stopped.items()
            ),
            "# HELP trace_ptune_collector_query_seconds_total Time spent running user queries.",
            "# TYPE trace_ptune_collector_query_seconds_total counter",
            f"trace_ptune_collector_query_seconds_total {st.query_seconds_sum:.6f}",
            "# HELP trace_ptune_collector_db_bytes Size of the database file and its WAL.",
            "# TYPE trace_ptune_collector_db_bytes gauge",
            f"trace_ptune_collector_db_bytes {store.db_size()}",
        ]
        return "\n".join(lines) + "\n"


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _bind_error(what: str, address: str, option: str, exc: OSError) -> CollectorError:
    if exc.errno == errno.EADDRINUSE:
        return CollectorError(
            f"cannot listen for {what} on {address}: the port is in use; pass {option} with another port"
        )
    return CollectorError(f"cannot listen for {what} on {address}: {exc.strerror or exc}; check {option}")


__all__ = ["Collector", "CollectorConfig", "parse_address", "parse_duration"]
