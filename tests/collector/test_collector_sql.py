"""Read-only SQL over the HTTP query API and the Postgres wire protocol."""

from __future__ import annotations

import os
import shutil
import socket
import struct
import subprocess
import sys
import threading
import urllib.request

import psycopg
import pytest

from tests.collector.conftest import pg_port, post_pb
from tests.collector.otlp_data import ADAPTER, generation_attrs, span_request
from trace_ptune import semconv
from trace_ptune.collector.client import CollectorClient
from trace_ptune.collector.sql_guard import check_read_only
from trace_ptune.errors import QueryError

REFUSED = [
    "DELETE FROM spans",
    "INSERT INTO adapters (adapter_hash) VALUES ('x')",
    "DROP TABLE spans",
    "CREATE TABLE t AS SELECT 1",
    "UPDATE spans SET tenant = 'x'",
    "COPY spans TO '/tmp/out.csv'",
    "ATTACH '/tmp/other.duckdb' AS o",
    "INSTALL httpfs",
    "LOAD httpfs",
    "SET threads = 1",
    "PRAGMA database_list",
    "SELECT * FROM read_csv('/etc/passwd')",
    "SELECT * FROM '/etc/passwd'",
    "SELECT read_text('/etc/hostname')",
    "SELECT * FROM glob('/*')",
    "SELECT * FROM query('DELETE FROM spans')",
    "SELECT 1; DELETE FROM spans",
    "WITH x AS (SELECT 1) SELECT * FROM read_parquet('x.parquet')",
]


@pytest.fixture
def loaded(collector):
    req = span_request(
        [
            {"attrs": generation_attrs(), "events": [(semconv.EVENT_EVALUATION_RESULT,
              {semconv.GEN_AI_EVALUATION_NAME: "em", semconv.GEN_AI_EVALUATION_SCORE_VALUE: s})]}
            for s in (0.0, 1.0, 1.0)
        ]
    )  # fmt: skip
    assert post_pb(collector.urls["http"] + "/v1/traces", req) == 200
    return collector


@pytest.mark.parametrize("sql", REFUSED)
def test_guard_refuses_writes_and_file_access(sql):
    with pytest.raises(QueryError):
        check_read_only(sql)


def test_query_api_returns_json_and_arrow_and_refuses_writes(loaded, client):
    data = client.query_result(
        "SELECT adapter_hash, avg(score_value) AS mean, count(*) AS n FROM evaluations WHERE name = ? GROUP BY 1",
        ["em"],
    )
    assert data["columns"] == ["adapter_hash", "mean", "n"]
    assert data["types"] == ["VARCHAR", "DOUBLE", "BIGINT"]
    assert data["rows"] == [[ADAPTER, pytest.approx(2 / 3), 3]]
    table = client.query_arrow("SELECT count(*) AS n FROM spans")
    assert table.column("n").to_pylist() == [3]
    for sql in REFUSED:
        with pytest.raises(QueryError):
            client.query(sql)
    assert client.query("SELECT count(*) FROM spans")[1] == [[3]]


def _dsn(c) -> str:
    return f"host=127.0.0.1 port={pg_port(c)} user=grafana dbname=traces connect_timeout=10"


def test_psycopg_simple_and_extended_protocols(loaded):
    with psycopg.connect(_dsn(loaded), autocommit=True) as conn:
        # simple protocol: no parameters
        assert conn.execute("SELECT 1").fetchone() == (1,)
        assert conn.execute("SELECT version()").fetchone()[0].startswith("PostgreSQL 16.")
        assert conn.execute("SHOW server_version").fetchone() == ("16.4",)
        cur = conn.execute("SELECT spans.Timestamp, Duration, adapter_version, score_value, "
                           "CAST(1.5 AS DECIMAL(10,2)) AS d, CAST(spans.Timestamp AS DATE) AS day, true AS ok, "
                           "SpanAttributes, now() AS tz FROM spans JOIN evaluations USING (SpanId) LIMIT 1")  # fmt: skip
        oids = [d.type_code for d in cur.description]
        assert oids == [1114, 20, 23, 701, 1700, 1082, 16, 114, 1184]
        row = cur.fetchone()
        assert (
            row[2] == 2
            and row[6] is True
            and str(row[4]) == "1.50"
            and row[7][semconv.PTUNE_TENANT] == "acme"
        )
        # extended protocol: parameters (psycopg sends Parse/Bind/Describe/Execute/Sync)
        rows = conn.execute(
            "SELECT name, count(*) FROM evaluations WHERE score_value >= %s AND tenant = %s GROUP BY name",
            [0.5, "acme"],
        ).fetchall()
        assert rows == [("em", 2)]
        # prepared and binary results
        for _ in range(3):
            assert conn.execute(
                "SELECT count(*) FROM spans WHERE adapter_version = %s", [2], prepare=True
            ).fetchone() == (3,)
        bcur = conn.cursor(binary=True)
        bcur.execute("SELECT input_tokens, spans.Timestamp, score_value, CAST(2.25 AS DECIMAL(6,3)) FROM spans "
                     "JOIN evaluations USING (SpanId) WHERE input_tokens = %s LIMIT 1", [12])  # fmt: skip
        b = bcur.fetchone()
        assert b[0] == 12 and b[1].year >= 2024 and str(b[3]) == "2.250"
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("DELETE FROM spans")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT * FROM read_csv(%s)", ["/etc/passwd"])
        # catalogs DuckDB lacks answer "no rows" without running, but only for a lone SELECT
        assert conn.execute("SELECT tgname FROM pg_catalog.pg_trigger").fetchall() == []
        with pytest.raises(psycopg.errors.InsufficientPrivilege):  # simple protocol: each statement checked
            conn.execute("DELETE FROM spans; SELECT tgname FROM pg_catalog.pg_trigger")
        with pytest.raises(psycopg.errors.SyntaxError, match="one statement at a time"):  # extended protocol
            conn.execute(
                "DELETE FROM spans; SELECT tgname FROM pg_catalog.pg_trigger WHERE tgname <> %s", ["x"]
            )
        assert conn.execute("SELECT count(*) FROM spans").fetchone() == (3,)
        with pytest.raises(psycopg.errors.UndefinedTable):
            conn.execute("SELECT * FROM nope")
        assert conn.execute("SELECT 2").fetchone() == (2,)  # the session survives errors
    # a transaction (psycopg's default) is answered harmlessly
    with psycopg.connect(_dsn(loaded)) as conn:
        conn.execute("SET statement_timeout = 1000")
        assert conn.execute("SELECT count(*) FROM spans").fetchone() == (3,)
        conn.commit()


def test_grafana_macro_expanded_sql(loaded):
    # What Grafana's PostgreSQL data source sends after expanding $__timeGroupAlias/$__timeFilter.
    sql = (
        'SELECT floor(extract(epoch from "Timestamp")/60)*60 AS "time", adapter_hash AS metric, avg(score_value) AS value '
        "FROM evaluations WHERE \"Timestamp\" BETWEEN '2000-01-01T00:00:00Z' AND '2100-01-01T00:00:00Z' "
        "GROUP BY 1, 2 ORDER BY 1"
    )
    with psycopg.connect(_dsn(loaded), autocommit=True) as conn:
        rows = conn.execute(sql, prepare=False).fetchall()
    assert len(rows) == 1 and rows[0][1] == ADAPTER and rows[0][2] == pytest.approx(2 / 3)


def test_password_is_required_when_configured(make_collector):
    c = make_collector(pg="127.0.0.1:0", pg_password="pw")
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(_dsn(c) + " password=wrong")
    with psycopg.connect(_dsn(c) + " password=pw", autocommit=True) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


@pytest.mark.skipif(shutil.which("psql") is None, reason="psql (postgresql-client) is not installed")
def test_psql_reads_while_refusing_writes(loaded):
    env = {**os.environ, "PGCONNECT_TIMEOUT": "10"}
    base = [
        "psql",
        "-h",
        "127.0.0.1",
        "-p",
        str(pg_port(loaded)),
        "-U",
        "grafana",
        "-d",
        "traces",
        "-X",
        "-A",
        "-t",
    ]
    out = subprocess.run(
        [*base, "-c", "SELECT count(*) FROM spans"], capture_output=True, text=True, env=env, timeout=30
    )
    assert out.returncode == 0 and out.stdout.strip() == "3", out.stderr
    out = subprocess.run(
        [*base, "-c", "DELETE FROM spans"], capture_output=True, text=True, env=env, timeout=30
    )
    assert out.returncode != 0 and "read-only" in out.stderr
    for listing in (r"\d", r"\dt"):  # psql's catalog queries, rewritten where DuckDB differs
        out = subprocess.run([*base, "-c", listing], capture_output=True, text=True, env=env, timeout=30)
        assert out.returncode == 0, out.stderr
        assert "main|spans|table|trace-ptune" in out.stdout.splitlines()
    out = subprocess.run([*base, "-c", r"\df"], capture_output=True, text=True, env=env, timeout=30)
    assert out.returncode == 0 and out.stdout.strip() == "", out.stderr  # no user functions
    out = subprocess.run(
        [*base, "-c", r"\df json_extract"], capture_output=True, text=True, env=env, timeout=30
    )
    assert out.returncode == 0 and "|json_extract|||func" in out.stdout.splitlines(), out.stderr
    out = subprocess.run([*base, "-c", r"\dn"], capture_output=True, text=True, env=env, timeout=30)
    assert out.returncode == 0 and "main|trace-ptune" in out.stdout, out.stderr
    out = subprocess.run([*base, "-c", r"\l"], capture_output=True, text=True, env=env, timeout=30)
    assert out.returncode == 0 and out.stdout.splitlines() == ["traces|trace-ptune|UTF8|C|C||libc|"], out
    # \d TABLE: pg_class columns DuckDB lacks come from a stand-in; catalogs of features DuckDB
    # does not have (policies, publications, inheritance...) answer "none"
    for table, first in (
        ("spans", "Timestamp|timestamp||not null|"),
        ("adapters", "adapter_hash|varchar||not null|"),
    ):
        out = subprocess.run(
            [*base, "-c", rf"\d {table}"], capture_output=True, text=True, env=env, timeout=30
        )
        assert out.returncode == 0 and out.stdout.splitlines()[0] == first, (out.returncode, out.stderr)
    out = subprocess.run([*base, "-c", r"\d nosuch"], capture_output=True, text=True, env=env, timeout=30)
    assert 'Did not find any relation named "nosuch"' in out.stderr
    out = subprocess.run([*base, "-c", "DESCRIBE spans"], capture_output=True, text=True, env=env, timeout=30)
    assert out.returncode == 0 and out.stdout.startswith("Timestamp|TIMESTAMP|"), out.stderr
    out = subprocess.run([*base, "-c", "SELECT 1"], capture_output=True, text=True, env=env, timeout=30)
    assert out.stdout.strip() == "1"


# Minutes of work unless something stops it.
LONG = "SELECT sum(i) FROM range(10000000000000) t(i)"


def _in_thread(conn: psycopg.Connection, sql: str) -> tuple[threading.Thread, list[BaseException]]:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            conn.execute(sql)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, errors


def _cancel_request(c, pid: int, key: int) -> None:
    with socket.create_connection(("127.0.0.1", pg_port(c)), timeout=10) as sock:
        sock.sendall(struct.pack(">iiii", 16, 80877102, pid, key))
        assert sock.recv(1) == b""  # the server answers a CancelRequest by closing


def _cancel_until_stopped(conn: psycopg.Connection, cancel) -> BaseException:
    """Run LONG on ``conn`` in a thread, calling ``cancel()`` every 0.1 s until it ends; its error."""
    thread, errors = _in_thread(conn, LONG)
    for _ in range(600):  # a hang guard, not a timing check
        cancel()
        thread.join(0.1)
        if not thread.is_alive():
            break
    assert errors and isinstance(errors[0], psycopg.errors.QueryCanceled), errors
    return errors[0]


def test_a_query_past_the_time_limit_is_stopped_and_the_collector_keeps_answering(make_collector):
    c = make_collector(pg="127.0.0.1:0", query_timeout=1.0)
    client = CollectorClient(c.urls["http"])
    with pytest.raises(QueryError, match="statement timeout after 1 s"):
        client.query(LONG)
    with pytest.raises(QueryError, match="statement timeout"):
        client.query_arrow(LONG)
    with psycopg.connect(_dsn(c), autocommit=True) as conn:
        # a CancelRequest with the wrong secret key stops nothing: the limit does
        error = _cancel_until_stopped(conn, lambda: _cancel_request(c, conn.info.backend_pid, 12345))
        assert "statement timeout" in str(error)
        assert conn.execute("SELECT 1").fetchone() == (1,)
    assert post_pb(c.urls["http"] + "/v1/traces", span_request([{"attrs": generation_attrs()}])) == 200
    assert client.query("SELECT count(*) FROM spans")[1] == [[1]]
    metrics = urllib.request.urlopen(c.urls["http"] + "/metrics", timeout=10).read().decode()
    assert 'trace_ptune_collector_queries_total{endpoint="http"} 3' in metrics
    assert 'trace_ptune_collector_queries_total{endpoint="pg"} 2' in metrics
    assert 'trace_ptune_collector_queries_stopped_total{reason="timeout"} 3' in metrics
    assert 'trace_ptune_collector_queries_stopped_total{reason="cancel"} 0' in metrics


def test_cancel_request_and_statement_timeout_stop_a_postgres_query(make_collector):
    c = make_collector(pg="127.0.0.1:0", query_timeout=None)  # no collector-wide limit
    with psycopg.connect(_dsn(c), autocommit=True) as conn:
        # psql's Ctrl-C and Grafana's cancelled panels send a CancelRequest on a new connection
        assert "user request" in str(_cancel_until_stopped(conn, conn.cancel_safe))
        assert conn.execute("SELECT 2").fetchone() == (2,)
        # a session's own limit
        assert conn.execute("SHOW statement_timeout").fetchone() == ("0",)
        conn.execute("SET statement_timeout = '300ms'")
        assert conn.execute("SHOW statement_timeout").fetchone() == ("300ms",)
        with pytest.raises(psycopg.errors.QueryCanceled, match=r"statement timeout after 0\.3 s"):
            conn.execute(LONG)
        conn.execute("RESET statement_timeout")
        assert conn.execute("SHOW statement_timeout").fetchone() == ("0",)
        with pytest.raises(psycopg.errors.InvalidParameterValue, match="statement_timeout"):
            conn.execute("SET statement_timeout TO 'soon'")
        assert conn.execute("SELECT 3").fetchone() == (3,)


def test_stopping_the_collector_stops_a_running_query(make_collector):
    c = make_collector(pg="127.0.0.1:0", query_timeout=None)
    with psycopg.connect(_dsn(c), autocommit=True) as conn:
        thread, errors = _in_thread(conn, LONG)
        thread.join(0.5)  # let it start
        stopper = threading.Thread(target=c.stop, daemon=True)
        stopper.start()
        stopper.join(60)  # a hang guard: without the interrupt, stop() waits minutes for the query
        assert not stopper.is_alive()
        thread.join(60)
        assert not thread.is_alive() and errors and isinstance(errors[0], psycopg.Error)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread priority is a Linux feature")
def test_queries_run_below_ingestion_priority(collector):
    own = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    on_query_thread = collector.store.read(
        lambda cur: os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    )
    assert on_query_thread >= max(own, 10)
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == own  # the caller is untouched
    assert os.getpriority(os.PRIO_PROCESS, os.getpid()) == own  # and so is the main thread
