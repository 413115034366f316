"""The DuckDB store: one writer thread owns the connection; everything else hands it batches.

Receivers convert OTLP to row batches (``trace_ptune.collector.otlp``) and call
:meth:`Store.submit`, which returns a :class:`Ticket`; a receiver acknowledges its client only
after ``ticket.wait()`` says the batch is committed. The queue is bounded by rows: when it is
full ``submit`` raises :class:`QueueFull` and the receiver answers 429/503 (HTTP) or
UNAVAILABLE (gRPC) so exporters retry later.

The writer groups queued batches into one transaction (one bulk insert per table from Arrow,
or DuckDB's appender when pyarrow is missing), upserts the ``adapters`` table, and fills the
adapter/tenant/deployment columns of evaluations from their scored span, also when the scored
span arrives after the evaluation. Reads use a cursor per request on the same database.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import duckdb

from trace_ptune import paths, semconv
from trace_ptune.collector import otlp, schema
from trace_ptune.errors import CollectorError

log = logging.getLogger(__name__)

try:  # optional: the fastest bulk path
    import pyarrow as pa
    import pyarrow.compute as _pc
except ImportError:  # pragma: no cover - exercised only without the collector extra
    pa = _pc = None

_EPOCH = dt.datetime(1970, 1, 1)
# How far back an evaluation's scored span is looked for (zone maps on Timestamp prune the rest).
_SCORED_SPAN_WINDOW_US = 7 * 24 * 3600 * 1_000_000
# How long an evaluation waits in memory for a scored span that has not arrived yet.
_PENDING_TTL_S = 3600.0
_PENDING_MAX = 200_000
CHECKPOINT_THRESHOLD = "512MB"
# User queries run on this many threads at this niceness (Linux: per thread), below ingestion.
QUERY_THREADS = 4
QUERY_NICE = 10

T = TypeVar("T")


def _lower_priority(nice: int) -> None:
    """Lower the calling thread's scheduling priority (Linux sets it per thread; elsewhere
    ``setpriority`` would lower the whole process, so it is left alone)."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)


class QueueFull(CollectorError):
    """The write queue is full: the client should retry after a short wait."""


@dataclass
class Stats:
    """Counters behind ``/metrics`` (updated under the GIL; read without locks)."""

    accepted: dict[str, int] = field(default_factory=lambda: {"spans": 0, "metrics": 0, "logs": 0})
    rejected: dict[str, int] = field(default_factory=lambda: {"spans": 0, "metrics": 0, "logs": 0})
    refused_full: int = 0
    commits: int = 0
    commit_seconds_sum: float = 0.0
    commit_seconds_max: float = 0.0
    last_commit_rows: int = 0
    evaluations: int = 0
    write_errors: int = 0
    queries: dict[str, int] = field(default_factory=lambda: {"http": 0, "pg": 0})
    queries_stopped: dict[str, int] = field(default_factory=lambda: {"timeout": 0, "cancel": 0})
    query_seconds_sum: float = 0.0

    def count_query(self, endpoint: str, seconds: float, stopped: str | None = None) -> None:
        """One user query answered (or stopped: ``timeout``, ``cancel``, ``shutdown``)."""
        self.queries[endpoint] = self.queries.get(endpoint, 0) + 1
        self.query_seconds_sum += seconds
        if stopped:
            self.queries_stopped[stopped] = self.queries_stopped.get(stopped, 0) + 1


class Ticket:
    """Completion of one submitted batch or task."""

    __slots__ = ("_event", "error", "result")

    def __init__(self) -> None:
        self._event = threading.Event()
        self.error: BaseException | None = None
        self.result: Any = None

    def done(self, error: BaseException | None = None, result: Any = None) -> None:
        self.error, self.result = error, result
        self._event.set()

    def wait(self, timeout: float | None = None) -> Any:
        """Block until committed; raise the writer's error (or ``CollectorError`` on timeout)."""
        if not self._event.wait(timeout):
            raise CollectorError(f"the write was not committed within {timeout} s; retry later")
        if self.error is not None:
            raise self.error
        return self.result


@dataclass
class _Write:
    batch: otlp.Batch
    signal: str
    ticket: Ticket
    rows: int


@dataclass
class _Task:
    fn: Callable[[duckdb.DuckDBPyConnection], Any]
    ticket: Ticket


_STOP = object()


def _lock_message(path: Path, exc: Exception) -> str:
    text = str(exc)
    if "lock" in text.lower():
        return (
            f"the database {path} is locked by another process (is a collector already running on it?); "
            "stop that process or pass another --db"
        )
    return f"cannot open the database {path}: {text.splitlines()[0]}"


def connect(path: str | Path, *, read_only: bool = False) -> duckdb.DuckDBPyConnection:
    """Open a DuckDB file with a one-sentence error when it is locked or unreadable."""
    path = Path(path)
    if paths.is_foreign_file(path):
        raise CollectorError(f"{path} is not a DuckDB database; pass a new or existing .duckdb file as --db")
    try:
        if not read_only:
            path.parent.mkdir(parents=True, exist_ok=True)
        return duckdb.connect(str(path), read_only=read_only)
    except duckdb.Error as exc:
        raise CollectorError(_lock_message(path, exc)) from None


def migrate(con: duckdb.DuckDBPyConnection) -> int:
    """Apply pending numbered migrations, each in one transaction; return the schema version."""
    con.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at TIMESTAMP)"
    )
    current = con.execute("SELECT coalesce(max(version), 0) FROM schema_migrations").fetchone()[0]
    existing = current > 0
    for version, statements in schema.MIGRATIONS:
        if version <= current:
            continue
        if existing:  # a rebuild copies the file's tables, which takes a while when they are large
            spans = con.execute(f"SELECT count(*) FROM {semconv.TABLE_SPANS}").fetchone()[0]
            log.warning(
                "upgrading the schema to version %d (%d spans stored); this runs once", version, spans
            )
        con.execute("BEGIN TRANSACTION")
        try:
            for stmt in statements:
                con.execute(stmt)
            con.execute("INSERT INTO schema_migrations VALUES (?, now()::TIMESTAMP)", [version])
            con.execute("COMMIT")
        except Exception:
            con.execute("ROLLBACK")
            raise
        current = version
    return current


class _ReadGate:
    """Readers share the connection; compaction (which swaps it) waits for them to finish."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._exclusive = False

    @contextlib.contextmanager
    def read(self) -> Iterator[None]:
        with self._cond:
            while self._exclusive:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                self._cond.notify_all()

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._cond:
            while self._exclusive:
                self._cond.wait()
            self._exclusive = True
            while self._readers:
                self._cond.wait()
        try:
            yield
        finally:
            with self._cond:
                self._exclusive = False
                self._cond.notify_all()


class Store:
    """The collector's database: migrations, the single writer thread, and read cursors."""

    def __init__(
        self,
        path: str | Path,
        *,
        max_queue_rows: int = 200_000,
        group_rows: int = 32_768,
        group_min_rows: int = 4096,
        group_wait_s: float = 0.02,
        group_expect_s: float = 0.003,
        retain_seconds: float | None = None,
        threads: int = 0,
    ) -> None:
        self.path = Path(path)
        self.max_queue_rows = max_queue_rows
        self.group_rows = group_rows
        self.group_min_rows = group_min_rows
        self.group_wait_s = group_wait_s
        self.group_expect_s = group_expect_s
        self._last_group = 1  # requests in the last commit
        self.retain_seconds = retain_seconds
        self.stats = Stats()
        self._con = connect(self.path)
        self.threads = threads
        self._configure(self._con)
        self.schema_version = migrate(self._con)
        self._queue: queue.Queue[Any] = queue.Queue()
        self._queued_rows = 0
        self._converting = 0  # requests between receipt and submit (see converting())
        # Held by the writer while it inserts and commits, and by in-process conversions: DuckDB
        # re-acquires the interpreter lock many times per insert, and a conversion holding it
        # (the C walk does not yield) made each commit about three times slower (~20 against
        # ~7 µs per span). Taking turns is faster than overlapping on one interpreter lock.
        self.cpu_gate = threading.Lock()
        self._qlock = threading.Lock()
        self._gate = _ReadGate()
        self._reading: set[duckdb.DuckDBPyConnection] = set()
        self._reading_lock = threading.Lock()
        self._query_pool = ThreadPoolExecutor(
            QUERY_THREADS,
            thread_name_prefix="trace-ptune-query",
            initializer=_lower_priority,
            initargs=(QUERY_NICE,),
        )
        self._pending: dict[str, float] = {}  # scored SpanId -> expiry (monotonic)
        self._adapters: dict[str, list] = {}  # what the adapters table holds, to skip no-op upserts
        self._load_pending()
        self._last_retention = 0.0
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="trace-ptune-writer", daemon=True)
        self._thread.start()

    def _configure(self, con: duckdb.DuckDBPyConnection) -> None:
        # Checkpoints recompress the open row group: at the default 16 MB of WAL a row group of
        # spans is rewritten ~10 times while it fills, and every rewrite leaves free blocks. At
        # 512 MB (~350k spans) the writer spends ~20% less per span than at 128 MB and the file
        # is ~35% smaller after 400k spans. Committed data is durable in the WAL either way; a
        # larger threshold only makes replay after a crash longer (~1 s for 470 MB).
        con.execute(f"SET checkpoint_threshold = '{CHECKPOINT_THRESHOLD}'")
        if self.threads > 0:
            # DuckDB scans the Arrow batches of an insert on every worker thread, each taking the
            # interpreter lock in turn; with one thread a 2-core collector ingests ~20% more spans
            # per second (a 10M-span `query regressions` then takes ~0.8 s instead of ~0.5 s).
            con.execute(f"SET threads = {int(self.threads)}")

    # ------------------------------------------------------------ submit

    @property
    def queue_rows(self) -> int:
        return self._queued_rows

    @contextlib.contextmanager
    def converting(self) -> Iterator[None]:
        """Mark a request as being converted, so the writer may wait for it to join a commit."""
        with self._qlock:
            self._converting += 1
        try:
            yield
        finally:
            with self._qlock:
                self._converting -= 1

    def submit(self, batch: otlp.Batch, signal: str) -> Ticket:
        """Queue a converted batch; raise :class:`QueueFull` when the queue has no room."""
        if self._closed:
            raise QueueFull("the collector is shutting down; retry against the next instance")
        ticket = Ticket()
        rows = batch.size
        if rows == 0 and not batch.adapters:
            self.stats.rejected[signal] = self.stats.rejected.get(signal, 0) + batch.rejected
            ticket.done()
            return ticket
        with self._qlock:
            if self._queued_rows and self._queued_rows + rows > self.max_queue_rows:
                self.stats.refused_full += 1
                raise QueueFull(
                    f"the write queue is full ({self._queued_rows} rows waiting); retry after a short wait"
                )
            self._queued_rows += rows
        self._queue.put(_Write(batch, signal, ticket, rows))
        return ticket

    def run_task(self, fn: Callable[[duckdb.DuckDBPyConnection], Any], timeout: float | None = None) -> Any:
        """Run ``fn(connection)`` on the writer thread, between commits; return its result."""
        ticket = Ticket()
        self._queue.put(_Task(fn, ticket))
        return ticket.wait(timeout)

    # ------------------------------------------------------------ reads

    @contextlib.contextmanager
    def cursor(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A fresh cursor for one read request (DuckDB refuses new work on a busy connection)."""
        with self._gate.read():
            cur = self._con.cursor()
            with self._reading_lock:
                self._reading.add(cur)
            try:
                yield cur
            finally:
                with self._reading_lock:
                    self._reading.discard(cur)
                cur.close()

    def read(self, fn: Callable[[duckdb.DuckDBPyConnection], T]) -> T:
        """Run ``fn(cursor)`` for a user query on one of the low-priority query threads.

        On 2 cores, two clients looping dashboard-sized queries on normal-priority threads cut
        ingestion by more than half; at a lower priority the writer and the conversion workers
        come first and queries take the cores that are left."""

        def job() -> T:
            with self.cursor() as cur:
                return fn(cur)

        return self._query_pool.submit(job).result()

    def interrupt_reads(self) -> int:
        """Stop every query running on a read cursor (shutdown); returns how many were open."""
        with self._reading_lock:
            cursors = list(self._reading)
        for cur in cursors:
            with contextlib.suppress(duckdb.Error):
                cur.interrupt()
        return len(cursors)

    def db_size(self) -> int:
        size = 0
        for p in (self.path, self.path.with_name(self.path.name + ".wal")):
            with contextlib.suppress(OSError):
                size += p.stat().st_size
        return size

    # ------------------------------------------------------------ lifecycle

    def close(self, timeout: float = 60.0) -> None:
        """Drain the queue, commit, checkpoint and close the file."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(_STOP)
        self._thread.join(timeout)
        if self.interrupt_reads():  # a long query must not hold the checkpoint and the exit
            log.info("stopped the queries still running")
        self._query_pool.shutdown(wait=False, cancel_futures=True)
        with self._gate.exclusive():
            try:
                self._con.execute("CHECKPOINT")
            except duckdb.Error as exc:  # pragma: no cover - disk trouble at shutdown
                log.warning("checkpoint at shutdown failed: %s", exc)
            self._con.close()

    # ------------------------------------------------------------ writer thread

    def _loop(self) -> None:
        stop = False
        while not stop:
            try:
                item = self._queue.get(timeout=1.0)
            except queue.Empty:
                self._maybe_retain()
                continue
            if item is _STOP:
                break
            if isinstance(item, _Task):
                self._run(item)
                continue
            writes = [item]
            rows = item.rows
            task = None
            # Group commit: take what is queued and, while the group is small and requests are
            # being converted right now, wait a little for them (a commit of 2,048 spans costs
            # about half as much per span as four commits of 512). A lone client never waits.
            now = time.monotonic()
            linger_until = now + self.group_wait_s
            # After a commit of several requests (concurrent clients), the others' next requests
            # are usually on their way: wait a moment for them even before they are converting.
            expect_until = now + self.group_expect_s if self._last_group > 1 else now
            while rows < self.group_rows:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    if rows >= self.group_min_rows or (
                        not self._converting
                        and (len(writes) >= self._last_group or time.monotonic() >= expect_until)
                    ):
                        break
                    wait = linger_until - time.monotonic()
                    if wait <= 0:
                        break
                    try:
                        nxt = self._queue.get(timeout=min(wait, 0.001))
                    except queue.Empty:
                        continue
                if nxt is _STOP:
                    stop = True
                    break
                if isinstance(nxt, _Task):
                    task = nxt
                    break
                writes.append(nxt)
                rows += nxt.rows
            self._last_group = len(writes)
            self._commit(writes)
            if task is not None:
                self._run(task)
            self._maybe_retain()
        # Drain whatever is still queued after the stop marker was posted.
        rest: list[_Write] = []
        while True:
            try:
                nxt = self._queue.get_nowait()
            except queue.Empty:
                break
            if isinstance(nxt, _Write):
                rest.append(nxt)
            elif isinstance(nxt, _Task):
                nxt.ticket.done(CollectorError("the collector is shutting down"))
        if rest:
            self._commit(rest)

    def _run(self, task: _Task) -> None:
        try:
            task.ticket.done(result=task.fn(self._con))
        except BaseException as exc:
            task.ticket.done(exc)

    def _commit(self, writes: list[_Write]) -> None:
        try:
            with self.cpu_gate:
                t0 = time.perf_counter()  # the commit itself, not the wait for the gate
                self._write(writes)
        except Exception as exc:
            self._adapters.clear()  # the cache may be ahead of the rolled-back table
            with contextlib.suppress(duckdb.Error):
                self._con.execute("ROLLBACK")
            if len(writes) > 1:
                # Isolate the bad batch: commit the others one by one.
                for w in writes:
                    self._commit([w])
                return
            self.stats.write_errors += 1
            log.warning("a batch could not be stored: %s", exc)
            self._release(writes, CollectorError(f"the batch could not be stored: {exc}"))
            return
        elapsed = time.perf_counter() - t0
        st = self.stats
        st.commits += 1
        st.commit_seconds_sum += elapsed
        st.commit_seconds_max = max(st.commit_seconds_max, elapsed)
        st.last_commit_rows = sum(w.rows for w in writes)
        for w in writes:
            st.accepted[w.signal] = st.accepted.get(w.signal, 0) + w.batch.accepted
            st.rejected[w.signal] = st.rejected.get(w.signal, 0) + w.batch.rejected
            st.evaluations += w.batch.counts.get(semconv.TABLE_EVALUATIONS, 0)
        self._release(writes, None)

    def _release(self, writes: list[_Write], error: BaseException | None) -> None:
        with self._qlock:
            self._queued_rows -= sum(w.rows for w in writes)
        for w in writes:
            w.ticket.done(error)

    def _write(self, writes: list[_Write]) -> None:
        con = self._con
        tables: dict[str, list[Any]] = {}
        rows: dict[str, list[tuple]] = {}
        adapters: dict[str, list] = {}
        missing: set[str] = set()
        eval_since: int | None = None
        for w in writes:
            b = w.batch
            for name, tbl in b.tables.items():
                tables.setdefault(name, []).append(tbl)
            for name, part in b.rows.items():  # only without pyarrow
                if part:
                    rows.setdefault(name, []).extend(part)
            for h, rec in b.adapters.items():
                _merge_adapter(adapters, h, rec)
            if b.missing:
                missing |= b.missing
                if b.eval_min_ts is not None:
                    eval_since = b.eval_min_ts if eval_since is None else min(eval_since, b.eval_min_ts)
        con.execute("BEGIN TRANSACTION")
        for name, parts in tables.items():
            insert_table(con, name, parts[0] if len(parts) == 1 else pa.concat_tables(parts))
        for name, part in rows.items():
            insert_rows(con, name, part)
        changed = self._adapter_changes(adapters)
        if changed:
            _upsert_adapters(con, changed)
        if missing:
            self._fill_new_evaluations(missing, eval_since or 0)
        if self._pending and (semconv.TABLE_SPANS in tables or semconv.TABLE_SPANS in rows):
            self._fill_waiting_evaluations(
                tables.get(semconv.TABLE_SPANS, []), rows.get(semconv.TABLE_SPANS, [])
            )
        con.execute("COMMIT")

    def _adapter_changes(self, adapters: dict[str, list]) -> list[list]:
        """Adapter records that add something to what is stored (new identity fields, a wider
        seen window); ``last_seen`` moving by less than a second is not worth a write."""
        known = self._adapters
        out = []
        for h, rec in adapters.items():
            cur = known.get(h)
            if (
                cur is None
                or any(cur[i] is None and rec[i] is not None for i in range(1, 8))
                or rec[8] < cur[8]
                or rec[9] - cur[9] >= 1_000_000
            ):
                out.append(rec)
                merged = list(rec) if cur is None else cur
                if cur is not None:
                    _merge_adapter(known, h, rec)
                else:
                    known[h] = merged
        return out

    # ------------------------------------------------------------ evaluation back-fill

    _FILL_SQL = (
        "UPDATE evaluations SET "
        + ", ".join(f"{c} = coalesce(evaluations.{c}, s.{c})" for c in otlp.FILL_COLUMNS)
        + ", response_id = coalesce(evaluations.response_id, s.response_id) "
        "FROM (SELECT DISTINCT ON (TraceId, SpanId) TraceId, SpanId, "
        + ", ".join(otlp.FILL_COLUMNS)
        + ", response_id FROM spans WHERE SpanId IN (SELECT unnest($1::VARCHAR[])) AND Timestamp >= make_timestamp($2)) s "
        "WHERE evaluations.SpanId = s.SpanId AND evaluations.TraceId = s.TraceId AND ("
        + " OR ".join(f"evaluations.{c} IS NULL" for c in otlp.FILL_COLUMNS)
        + ") RETURNING evaluations.SpanId"
    )

    def _fill(self, span_ids: list[str], since_us: int) -> set[str]:
        rows = self._con.execute(self._FILL_SQL, [span_ids, since_us]).fetchall()
        return {r[0] for r in rows}

    def _fill_new_evaluations(self, missing: set[str], eval_min_ts: int) -> None:
        found = self._fill(sorted(missing), eval_min_ts - _SCORED_SPAN_WINDOW_US)
        expiry = time.monotonic() + _PENDING_TTL_S
        for sid in missing - found:
            self._pending[sid] = expiry
        if len(self._pending) > _PENDING_MAX:
            self._expire_pending(force=True)

    def _fill_waiting_evaluations(self, span_tables: list[Any], span_rows: list[tuple]) -> None:
        """Evaluations stored before their scored span: fill them from the spans just inserted."""
        pending = self._pending
        ids: set[str] = set()
        since: int | None = None
        for tbl in span_tables:
            hit = [sid for sid in tbl.column("SpanId").to_pylist() if sid in pending]
            if hit:
                ids.update(hit)
                lo = _pc.min(tbl.column("Timestamp")).cast(pa.int64()).as_py()
                since = lo if since is None else min(since, lo)
        for row in span_rows:  # only without pyarrow
            if row[2] in pending:
                ids.add(row[2])
                since = row[0] if since is None else min(since, row[0])
        if not ids:
            return
        self._fill(sorted(ids), since or 0)
        for sid in ids:
            pending.pop(sid, None)

    def _expire_pending(self, force: bool = False) -> None:
        now = time.monotonic()
        self._pending = {k: v for k, v in self._pending.items() if v > now}
        if force and len(self._pending) > _PENDING_MAX:
            keep = sorted(self._pending.items(), key=lambda kv: kv[1])[-_PENDING_MAX // 2 :]
            self._pending = dict(keep)

    def _load_pending(self) -> None:
        """After a restart: evaluations of the last hour still waiting for their scored span."""
        cond = " OR ".join(f"{c} IS NULL" for c in otlp.FILL_COLUMNS)
        rows = self._con.execute(
            f"SELECT DISTINCT SpanId FROM evaluations WHERE SpanId IS NOT NULL AND ({cond}) "
            "AND Timestamp >= now()::TIMESTAMP - INTERVAL 1 HOUR LIMIT ?",
            [_PENDING_MAX],
        ).fetchall()
        expiry = time.monotonic() + _PENDING_TTL_S
        self._pending = {r[0]: expiry for r in rows}

    # ------------------------------------------------------------ retention

    def _maybe_retain(self) -> None:
        now = time.monotonic()
        if now - self._last_retention > 300:
            self._expire_pending()
        if not self.retain_seconds or now - self._last_retention < 3600:
            return
        self._last_retention = now
        try:
            delete_older_than(self._con, self.retain_seconds)
        except duckdb.Error as exc:  # pragma: no cover - disk trouble
            log.warning("retention delete failed: %s", exc)


# ---------------------------------------------------------------- bulk insert


def _kinds(table: str) -> list[str]:
    kinds = otlp.COLUMN_KINDS.get(table, {})
    return [kinds.get(c, "text") for c in otlp.TABLE_COLUMNS[table]]


def insert_table(con: duckdb.DuckDBPyConnection, table: str, tbl: Any) -> None:
    """Bulk-insert an Arrow table whose columns are the table's columns, in order.

    DuckDB's replacement scan reads the table from this frame's local variable: about 0.9 ms
    cheaper per insert than ``register()`` / ``unregister()``, which create and drop a view."""
    _ptune_arrow_batch = tbl  # read by the statement below
    con.execute(f"INSERT INTO {table} SELECT * FROM _ptune_arrow_batch")


def insert_rows(con: duckdb.DuckDBPyConnection, table: str, rows: list[tuple]) -> None:
    """Bulk-insert row tuples (in the table's column order; timestamps as µs integers)."""
    if not rows:
        return
    columns = otlp.TABLE_COLUMNS[table]
    kinds = _kinds(table)
    if pa is not None:
        types = {"ts": pa.timestamp("us"), "int": pa.int64(), "float": pa.float64(), "bool": pa.bool_()}
        cols = list(zip(*rows, strict=True))
        arrays = [pa.array(col, type=types.get(k, pa.string())) for col, k in zip(cols, kinds, strict=True)]
        insert_table(con, table, pa.Table.from_arrays(arrays, names=list(columns)))
        return
    ts_idx = [i for i, k in enumerate(kinds) if k == "ts"]  # pragma: no cover - without pyarrow
    if ts_idx:  # pragma: no cover
        rows = [_with_datetimes(r, ts_idx) for r in rows]
    app = con.appender(table)  # pragma: no cover
    app.append_rows(rows)  # pragma: no cover
    app.flush()  # pragma: no cover


def _with_datetimes(row: tuple, idx: list[int]) -> tuple:  # pragma: no cover - without pyarrow
    out = list(row)
    for i in idx:
        if out[i] is not None:
            out[i] = _EPOCH + dt.timedelta(microseconds=out[i])
    return tuple(out)


def _merge_adapter(into: dict[str, list], h: str, rec: list) -> None:
    cur = into.get(h)
    if cur is None:
        into[h] = list(rec)
        return
    for i in range(1, 8):
        if cur[i] is None:
            cur[i] = rec[i]
    cur[8] = min(cur[8], rec[8])
    cur[9] = max(cur[9], rec[9])


_UPSERT_ADAPTERS = (
    "INSERT INTO adapters SELECT unnest($1::VARCHAR[]), unnest($2::VARCHAR[]), unnest($3::INTEGER[]), "
    "unnest($4::VARCHAR[]), unnest($5::VARCHAR[]), unnest($6::INTEGER[]), unnest($7::VARCHAR[]), "
    "unnest($8::VARCHAR[]), make_timestamp(unnest($9::BIGINT[])), make_timestamp(unnest($10::BIGINT[])) "
    "ON CONFLICT (adapter_hash) DO UPDATE SET "
    + ", ".join(
        f"{c} = coalesce({c}, excluded.{c})"
        for c in (
            "adapter_name",
            "adapter_version",
            "parent_hash",
            "method",
            "num_virtual_tokens",
            "base_model_name",
            "base_fingerprint",
        )
    )
    + ", first_seen = least(first_seen, excluded.first_seen), last_seen = greatest(last_seen, excluded.last_seen)"
)


def _upsert_adapters(con: duckdb.DuckDBPyConnection, records: list[list]) -> None:
    # A handful of rows per commit: one statement with list parameters.
    con.execute(_UPSERT_ADAPTERS, [list(col) for col in zip(*records, strict=True)])


# ---------------------------------------------------------------- maintenance


def delete_older_than(con: duckdb.DuckDBPyConnection, seconds: float) -> dict[str, int]:
    """Retention: delete rows older than ``seconds`` from every signal table."""
    cutoff = dt.datetime.now(dt.UTC).replace(tzinfo=None) - dt.timedelta(seconds=seconds)
    counts = {}
    for table in (semconv.TABLE_SPANS, semconv.TABLE_EVALUATIONS, semconv.TABLE_METRICS, semconv.TABLE_LOGS):
        counts[table] = con.execute(f"DELETE FROM {table} WHERE Timestamp < ?", [cutoff]).fetchone()[0]
    return counts


def export_parquet(con: duckdb.DuckDBPyConnection, directory: str | Path) -> dict[str, int]:
    """Write every table to ``DIR/<table>/day=YYYY-MM-DD/*.parquet`` (adapters unpartitioned)."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    counts: dict[str, int] = {}
    for table in (semconv.TABLE_SPANS, semconv.TABLE_EVALUATIONS, semconv.TABLE_METRICS, semconv.TABLE_LOGS):
        target = str(out / table).replace("'", "''")
        n = con.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
        counts[table] = n
        if n:
            con.execute(
                f"COPY (SELECT *, CAST(Timestamp AS DATE) AS day FROM {table}) TO '{target}' "
                "(FORMAT parquet, PARTITION_BY (day), OVERWRITE_OR_IGNORE true)"
            )
    target = str(out / f"{semconv.TABLE_ADAPTERS}.parquet").replace("'", "''")
    con.execute(f"COPY {semconv.TABLE_ADAPTERS} TO '{target}' (FORMAT parquet)")
    counts[semconv.TABLE_ADAPTERS] = con.execute(f"SELECT count(*) FROM {semconv.TABLE_ADAPTERS}").fetchone()[
        0
    ]
    return counts


def compact_file(con: duckdb.DuckDBPyConnection, path: Path) -> tuple[duckdb.DuckDBPyConnection, int, int]:
    """Copy-and-swap: copy every table into a fresh file, replace the old one, reopen.

    DuckDB does not shrink a file after deletes, so this is how space comes back. ``con`` is
    closed; the new connection is returned with the sizes before and after.
    """
    before = path.stat().st_size if path.exists() else 0
    tmp = path.with_name(path.name + ".compact")
    for p in (tmp, tmp.with_name(tmp.name + ".wal")):
        p.unlink(missing_ok=True)
    con.execute("CHECKPOINT")
    lit = str(tmp).replace("'", "''")
    con.execute(f"ATTACH '{lit}' AS __ptune_compact")
    try:
        current = con.execute("SELECT current_database()").fetchone()[0]
        con.execute(f'COPY FROM DATABASE "{current}" TO __ptune_compact')
    finally:
        con.execute("DETACH __ptune_compact")
    con.close()
    os.replace(tmp, path)
    path.with_name(path.name + ".wal").unlink(missing_ok=True)
    new = duckdb.connect(str(path))
    return new, before, path.stat().st_size


def compact_offline(path: str | Path) -> tuple[int, int]:
    """Compact a database file no collector holds; return sizes before and after."""
    path = Path(path)
    if not path.exists():
        raise CollectorError(f"no database at {path}; pass --db with an existing file")
    con = connect(path)
    new, before, after = compact_file(con, path)
    new.close()
    return before, after


def _swap_connection(store: Store, fn: Callable[[], duckdb.DuckDBPyConnection]) -> None:
    with store._gate.exclusive():
        store._con = fn()


def compact_running(store: Store, timeout: float = 600.0) -> tuple[int, int]:
    """Compact under the running writer: ingestion pauses (clients get 429 and retry)."""

    def task(con: duckdb.DuckDBPyConnection) -> tuple[int, int]:
        result: dict[str, tuple[int, int]] = {}

        def swap() -> duckdb.DuckDBPyConnection:
            new, before, after = compact_file(con, store.path)
            store._configure(new)
            result["sizes"] = (before, after)
            return new

        _swap_connection(store, swap)
        return result["sizes"]

    return store.run_task(task, timeout)
