"""Durability, back-pressure, shutdown and the ``trace-ptune collector`` commands."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import duckdb
import pytest
from click.testing import CliRunner
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SpanExportResult

from tests.collector.conftest import PB, post, start_subprocess
from tests.collector.otlp_data import generation_attrs, span_request
from trace_ptune.cli.main import cli
from trace_ptune.collector import Collector, CollectorConfig
from trace_ptune.collector.client import CollectorClient
from trace_ptune.errors import CollectorError


def test_kill_9_during_ingestion_loses_no_acknowledged_span(tmp_path):
    db = tmp_path / "k.duckdb"
    proc, info = start_subprocess(db)
    url = info["urls"]["http"] + "/v1/traces"
    acked: list[str] = []
    stop = threading.Event()

    def send() -> None:
        while not stop.is_set():
            ids = [os.urandom(8) for _ in range(50)]
            req = span_request([{"span_id": i, "attrs": generation_attrs()} for i in ids])
            try:
                status, _, _ = post(url, req.SerializeToString(), PB)
            except OSError:
                return
            if status == 200:
                acked.extend(i.hex() for i in ids)

    threads = [threading.Thread(target=send) for _ in range(3)]
    for t in threads:
        t.start()
    while len(acked) < 1000:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    stop.set()
    for t in threads:
        t.join(30)
    con = duckdb.connect(str(db), read_only=True)
    stored = {r[0] for r in con.execute("SELECT SpanId FROM spans").fetchall()}
    con.close()
    assert len(acked) >= 1000
    assert set(acked) <= stored


@pytest.mark.parametrize("workers", [0, 2])
def test_overload_answers_429_and_retrying_exporters_lose_nothing(make_collector, workers):
    c = make_collector(max_queue_rows=120, workers=workers)
    store = c.store
    # Stall the writer so the queue fills up.
    stall = threading.Thread(target=store.run_task, args=(lambda con: time.sleep(1.5),))
    stall.start()
    time.sleep(0.1)
    results: list[SpanExportResult] = []

    def export(n: int) -> None:
        tp = TracerProvider()
        exporter = OTLPSpanExporter(endpoint=c.urls["http"] + "/v1/traces", timeout=30)
        tracer = tp.get_tracer("load")
        spans = []
        for i in range(n):
            with tracer.start_as_current_span(f"s{i}") as s:
                spans.append(s)
        results.append(exporter.export(spans))

    threads = [threading.Thread(target=export, args=(100,)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    stall.join()
    assert results == [SpanExportResult.SUCCESS] * 4
    assert store.stats.refused_full > 0  # the queue really was full
    assert CollectorClient(c.urls["http"]).query("SELECT count(*) FROM spans")[1] == [[400]]


@pytest.mark.parametrize("repeated", [False, True], ids=["once", "repeated"])
def test_sigterm_drains_checkpoints_and_exits_zero(tmp_path, repeated):
    """Repeated: SIGTERM and SIGINT every 20 ms until exit, as a supervisor signalling the whole
    process group or an impatient user would; they must not cut the drain short."""
    db = tmp_path / "t.duckdb"
    proc, info = start_subprocess(db)
    req = span_request([{} for _ in range(20)])
    assert post(info["urls"]["http"] + "/v1/traces", req.SerializeToString(), PB)[0] == 200
    proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 30
    while repeated and proc.poll() is None and time.monotonic() < deadline:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
            proc.send_signal(signal.SIGINT)
        time.sleep(0.02)
    assert proc.wait(30) == 0
    assert not db.with_name(db.name + ".collector.json").exists()
    con = duckdb.connect(str(db), read_only=True)
    assert con.execute("SELECT count(*) FROM spans").fetchone() == (20,)
    con.close()


def test_locked_database_and_busy_port_give_one_sentence_errors(tmp_path):
    db = tmp_path / "l.duckdb"
    proc, _ = start_subprocess(db)
    try:
        out = subprocess.run(
            [sys.executable, "-m", "trace_ptune.cli.main", "collector", "run", "--db", str(db), "--http", "127.0.0.1:0", "--grpc", "off"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert out.returncode == 1
        assert "locked by another process" in out.stderr and "Traceback" not in out.stderr
    finally:
        proc.terminate()
        proc.wait(30)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(CollectorError, match="port is in use"):
            Collector(CollectorConfig(db=tmp_path / "p.duckdb", http=f"127.0.0.1:{port}", grpc=None)).start()
    # the failed start released the file
    Collector(CollectorConfig(db=tmp_path / "p.duckdb", http="127.0.0.1:0", grpc=None)).start().stop()


def test_cli_export_compact_status_and_retention(tmp_path, make_collector):
    db = tmp_path / "c.duckdb"
    c = make_collector(db=db)
    req = span_request([{"attrs": generation_attrs()} for _ in range(30)])
    post(c.urls["http"] + "/v1/traces", req.SerializeToString(), PB)
    runner = CliRunner()
    # through the running collector (found via the side file)
    res = runner.invoke(cli, ["collector", "status", "--db", str(db), "--json"])
    assert res.exit_code == 0, res.output
    status = json.loads(res.stdout)[0]
    assert status["running"] is True and status["spans"] == 30 and status["adapters"] == 1
    out = tmp_path / "export"
    res = runner.invoke(cli, ["collector", "export", "--parquet", str(out), "--db", str(db), "--json"])
    assert res.exit_code == 0, res.output
    assert {r["table"]: r["rows"] for r in json.loads(res.stdout)}["spans"] == 30
    days = list((out / "spans").glob("day=*/*.parquet"))
    assert days
    assert duckdb.connect().execute(
        f"SELECT count(*) FROM read_parquet('{out}/spans/*/*.parquet')"
    ).fetchone() == (30,)
    threads = "SELECT current_setting('threads')"
    assert CollectorClient(c.urls["http"]).query(threads)[1] == [[1]]  # --db-threads default
    res = runner.invoke(cli, ["collector", "compact", "--db", str(db), "--json"])
    assert res.exit_code == 0, res.output
    # still ingesting and reading after the swap, on a connection configured like the first
    post(c.urls["http"] + "/v1/traces", span_request([{}]).SerializeToString(), PB)
    assert CollectorClient(c.urls["http"]).query("SELECT count(*) FROM spans")[1] == [[31]]
    assert CollectorClient(c.urls["http"]).query(threads)[1] == [[1]]
    # retention deletes old rows
    from trace_ptune.collector.store import delete_older_than

    counts = c.store.run_task(lambda con: delete_older_than(con, -3600))
    assert counts["spans"] == 31
    c.stop()
    # offline
    res = runner.invoke(cli, ["collector", "compact", "--db", str(db), "--json"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(cli, ["collector", "status", "--db", str(db), "--json"])
    assert json.loads(res.stdout)[0]["running"] is False and json.loads(res.stdout)[0]["spans"] == 0


def test_migrations_are_recorded_and_reopening_is_idempotent(tmp_path, caplog):
    db = tmp_path / "m.duckdb"
    with caplog.at_level("WARNING", logger="trace_ptune.collector.store"):
        for _ in range(2):
            c = Collector(CollectorConfig(db=db, http="127.0.0.1:0", grpc=None)).start()
            c.stop()
    assert "upgrading the schema" not in caplog.text  # a new file is created at the latest version
    con = duckdb.connect(str(db), read_only=True)
    from trace_ptune.collector.schema import LATEST_VERSION

    assert con.execute("SELECT max(version), count(*) FROM schema_migrations").fetchone() == (
        LATEST_VERSION,
        LATEST_VERSION,
    )
    con.close()


def test_collector_import_never_loads_torch():
    code = "import sys, trace_ptune.collector.server, trace_ptune.cli.collector; print('torch' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "False False", out.stderr


def test_side_file_names_the_urls(tmp_path):
    db = tmp_path / "s.duckdb"
    c = Collector(CollectorConfig(db=db, http="127.0.0.1:0", grpc="127.0.0.1:0")).start()
    info = json.loads(Path(str(db) + ".collector.json").read_text())
    assert info["pid"] == os.getpid() and info["urls"] == c.urls
    c.stop()
    assert not Path(str(db) + ".collector.json").exists()


def test_migrations_keep_rows_of_a_version_1_file_and_compress_varying_json_with_zstd(tmp_path, caplog):
    from trace_ptune.collector import schema
    from trace_ptune.collector.store import migrate

    db = tmp_path / "v1.duckdb"
    con = duckdb.connect(str(db))
    con.execute("CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, applied_at TIMESTAMP)")
    for stmt in schema.MIGRATIONS[0][1]:
        con.execute(stmt)
    con.execute("INSERT INTO schema_migrations VALUES (1, now()::TIMESTAMP)")
    con.execute(
        "INSERT INTO spans (Timestamp, TraceId, SpanId, SpanName, SpanAttributes, Events, adapter_hash) "
        """VALUES (TIMESTAMP '2025-01-01', 'ab', 'cd', 'x', '{"k":1}', '[]', 'sha256:1')"""
    )
    con.execute(
        "INSERT INTO evaluations (Timestamp, source, name, score_value) VALUES (now(), 'log', 'em', 1)"
    )
    with caplog.at_level("WARNING", logger="trace_ptune.collector.store"):
        assert migrate(con) == schema.LATEST_VERSION
    assert f"upgrading the schema to version {schema.LATEST_VERSION} (1 spans stored)" in caplog.text
    assert con.execute("SELECT SpanAttributes->>'k', adapter_hash FROM spans").fetchall() == [
        ("1", "sha256:1")
    ]
    assert con.execute("SELECT name, score_value FROM evaluations").fetchall() == [("em", 1.0)]
    ddl = con.execute("SELECT sql FROM duckdb_tables() WHERE table_name = 'spans'").fetchone()[0]
    assert "SpanAttributes JSON USING COMPRESSION ZSTD" in ddl
    assert "Events JSON USING COMPRESSION ZSTD" in ddl
    # Nearly constant JSON columns keep DuckDB's own choice (ZSTD took whole blocks for them).
    assert "ResourceAttributes JSON," in ddl and "Links JSON," in ddl
    ddl = con.execute("SELECT sql FROM duckdb_tables() WHERE table_name = 'evaluations'").fetchone()[0]
    assert "ZSTD" not in ddl
    cols = [
        r[0]
        for r in con.execute("SELECT column_name FROM duckdb_columns() WHERE table_name = 'spans'").fetchall()
    ]
    assert cols[:3] == ["Timestamp", "TraceId", "SpanId"] and len(cols) == 32
    assert {r[0] for r in con.execute("SHOW TABLES").fetchall()} >= {
        "spans",
        "evaluations",
        "logs",
        "metrics",
    }
    con.close()


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["run", "--http", "127.0.0.1:99999", "--grpc", "off"], "out of range"),
        (["run", "--http", "127.0.0.1:0", "--grpc", "off", "--pg", "nonsense"], "cannot read the address"),
        (
            ["run", "--http", "127.0.0.1:0", "--grpc", "off", "--retain", "0d"],
            "would delete every stored row",
        ),
        (["status", "--collector", "notaurl"], "not an http(s) URL"),
        (["export", "--parquet", "out", "--collector", "garbage"], "not an http(s) URL"),
    ],
)
def test_cli_bad_port_retention_and_url_are_one_sentence_errors(tmp_path, args, fragment):
    db = tmp_path / "b.duckdb"
    result = CliRunner().invoke(cli, ["collector", *args, "--db", str(db)])
    assert result.exit_code == 1 and fragment in result.stderr
    assert result.exc_info[0] is SystemExit and len(result.stderr.strip().splitlines()) == 1
    assert not db.exists()  # a typo in the command line creates no database


def test_a_failed_start_leaves_the_callers_signal_handlers_as_they_were(tmp_path):
    # the CLI ignores SIGTERM/SIGINT only after a drain it is about to exit from
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        before = (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT))
        result = CliRunner().invoke(
            cli,
            [
                "collector",
                "run",
                "--http",
                f"127.0.0.1:{port}",
                "--grpc",
                "off",
                "--db",
                str(tmp_path / "s.duckdb"),
            ],
        )
    assert result.exit_code == 1 and "port is in use" in result.stderr
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before


def test_a_file_that_is_not_duckdb_is_refused_as_db_and_left_untouched(tmp_path):
    # DuckDB 2.0 opens some other files without complaint; a mistyped --db must not store nowhere.
    data = tmp_path / "train.jsonl"
    data.write_text('{"input": "a", "target": "b"}\n')
    before = data.read_bytes()
    for args in (["collector", "run", "--db", str(data)], ["query", "sql", "SELECT 1", "--db", str(data)]):
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 1, result.output
        assert "is not a DuckDB database" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
    assert data.read_bytes() == before


def test_self_metrics_report_commits_and_the_converter_in_use(make_collector):
    import urllib.request

    from trace_ptune.collector import otlp

    c = make_collector(grpc=None)
    for _ in range(3):
        post(c.urls["http"] + "/v1/traces", span_request([{}, {}]).SerializeToString(), PB)
    text = urllib.request.urlopen(c.urls["http"] + "/metrics").read().decode()
    values = dict(line.rsplit(" ", 1) for line in text.splitlines() if line and not line.startswith("#"))
    assert values['trace_ptune_collector_accepted_total{signal="spans"}'] == "6"
    assert 1 <= int(values["trace_ptune_collector_commit_seconds_count"]) <= 3
    assert 0 < float(values["trace_ptune_collector_commit_seconds_sum"]) < 30
    assert values["trace_ptune_collector_native_walk"] == str(int(otlp._native_walk() is not None))


def test_query_timeout_option_reads_seconds_durations_and_off(tmp_path):
    from trace_ptune.cli.collector import _query_timeout

    assert (_query_timeout("90"), _query_timeout("5m"), _query_timeout("1.5s")) == (90.0, 300.0, 1.5)
    assert _query_timeout("off") is None and _query_timeout("0") is None and _query_timeout("0s") is None
    db = tmp_path / "q.duckdb"
    for bad in ("soon", "-5", "inf"):
        result = CliRunner().invoke(cli, ["collector", "run", "--db", str(db), "--query-timeout", bad])
        assert result.exit_code == 2 and "is not a time limit" in result.stderr
    assert not db.exists()
