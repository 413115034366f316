"""``--workers N``: conversion in worker processes stores exactly what in-process conversion stores."""

from __future__ import annotations

import gzip
import json
import os
import random
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import duckdb
import pytest
from click.testing import CliRunner
from google.rpc import status_pb2
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcSpanExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpSpanExporter

from tests.collector.conftest import PB, grpc_target, post
from tests.collector.otlp_data import ADAPTER, eval_log_request, generation_attrs, span_request
from tests.collector.test_collector_ingest import _emit_spans
from tests.collector.test_collector_native_walk import random_request
from trace_ptune.cli.main import cli
from trace_ptune.collector.client import CollectorClient

TABLES = {
    "spans": "TraceId, SpanId, SpanName",
    "evaluations": "TraceId, SpanId, name, source, score_value",
    "adapters": "adapter_hash",
    "logs": "Timestamp, SpanId",
}


def _contents(url: str) -> dict:
    client = CollectorClient(url)
    return {t: client.query(f"SELECT * FROM {t} ORDER BY {order}") for t, order in TABLES.items()}


def test_workers_store_the_same_rows_and_answers_as_in_process(make_collector, tmp_path):
    inproc = make_collector(db=tmp_path / "inproc.duckdb")
    workers = make_collector(db=tmp_path / "workers.duckdb", workers=2)
    rng = random.Random(7)
    span_ids: list[bytes] = []
    bodies = [random_request(rng, span_ids).SerializeToString() for _ in range(12)]
    # log-based evaluations of a scored span stored before and after them: both are filled in
    # with the span's adapter identity by the writer
    t1, s1, t2, s2 = os.urandom(16), os.urandom(8), os.urandom(16), os.urandom(8)
    scored = span_request([{"trace_id": t1, "span_id": s1, "attrs": generation_attrs()}]).SerializeToString()
    later = span_request([{"trace_id": t2, "span_id": s2, "attrs": generation_attrs()}]).SerializeToString()
    json_body = json.dumps(
        {"resourceSpans": [{"scopeSpans": [{"spans": [{
            "traceId": "5b8efff798038103d269b633813fc60c", "spanId": "eee19b7ec3c1b174", "name": "op",
            "startTimeUnixNano": "1700000000000000000", "endTimeUnixNano": "1700000000500000000",
            "attributes": [{"key": "ptune.tenant", "value": {"stringValue": "acme"}}],
        }]}]}]}
    ).encode()  # fmt: skip
    logs = [eval_log_request(t, s, "helpful", 0.5).SerializeToString() for t, s in ((t1, s1), (t2, s2))]
    for c in (inproc, workers):
        answers = [post(c.urls["http"] + "/v1/traces", b, PB) for b in [*bodies, scored]]
        answers += [post(c.urls["http"] + "/v1/logs", log, PB) for log in logs]
        answers.append(post(c.urls["http"] + "/v1/traces", json_body, {"Content-Type": "application/json"}))
        answers.append(
            post(c.urls["http"] + "/v1/traces", gzip.compress(bodies[0]), {**PB, "Content-Encoding": "gzip"})
        )
        answers.append(post(c.urls["http"] + "/v1/traces", later, PB))
        c.answers = [(status, body) for status, _, body in answers]
    assert workers.answers == inproc.answers
    assert {status for status, _ in inproc.answers} == {200}
    assert any(body for _, body in inproc.answers)  # some requests were partial successes
    got, want = _contents(workers.urls["http"]), _contents(inproc.urls["http"])
    assert got["spans"][1], "no spans stored"
    assert got == want
    _, filled = CollectorClient(workers.urls["http"]).query(
        "SELECT count(*) FROM evaluations WHERE source = 'log' AND adapter_hash = ?", [ADAPTER]
    )
    assert filled == [[2]]


def test_workers_take_real_exporters_and_refuse_malformed_bodies(make_collector):
    c = make_collector(workers=1)
    _emit_spans(HttpSpanExporter(endpoint=c.urls["http"] + "/v1/traces"))
    _emit_spans(GrpcSpanExporter(endpoint=grpc_target(c), insecure=True))
    _, rows = CollectorClient(c.urls["http"]).query("SELECT count(*) FROM spans")
    assert rows == [[4]]
    status, _, body = post(c.urls["http"] + "/v1/traces", b"\x0a\xff\xff\xff", PB)
    assert status == 400
    assert "protobuf" in status_pb2.Status.FromString(body).message
    status, _, body = post(
        c.urls["http"] + "/v1/traces", b'{"resourceSpans": 3}', {"Content-Type": "application/json"}
    )
    assert status == 400, body


def test_a_dead_worker_fails_one_request_retryably_and_is_replaced(make_collector):
    c = make_collector(workers=1)
    url = c.urls["http"] + "/v1/traces"
    rng = random.Random(3)
    body = random_request(rng, []).SerializeToString()
    assert post(url, body, PB)[0] == 200
    pool = c.ingestor._pool
    old = pool._all[0].proc
    os.kill(old.pid, signal.SIGKILL)
    old.join(10)
    status, headers, answer = post(url, body, PB)
    assert status == 503, answer
    assert "Retry-After" in headers
    assert "worker" in status_pb2.Status.FromString(answer).message
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # the replacement may still be starting: exporters retry
        status = post(url, body, PB)[0]
        if status == 200:
            break
        time.sleep(0.2)
    assert status == 200
    assert pool._all[0].proc.pid != old.pid
    metrics = urllib.request.urlopen(c.urls["http"] + "/metrics", timeout=10).read().decode()
    assert "trace_ptune_collector_workers 1\n" in metrics
    assert "trace_ptune_collector_worker_restarts_total 1\n" in metrics


def test_cli_workers_count_auto_and_bad_values(tmp_path, monkeypatch):
    from trace_ptune.cli.collector import _workers

    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {0, 1, 2, 3, 4, 5, 6, 7})
    assert (_workers("auto"), _workers("AUTO"), _workers("0"), _workers("3")) == (4, 4, 0, 3)
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {0})
    assert _workers("auto") == 0
    for bad in ("x", "-1", "2.5"):
        result = CliRunner().invoke(
            cli, ["collector", "run", "--workers", bad, "--db", str(tmp_path / "w.duckdb")]
        )
        assert result.exit_code == 2
        assert f"'{bad}' is not a worker count; pass 0 or more, or auto." in result.stderr
    assert not (tmp_path / "w.duckdb").exists()


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out += [int(x) for x in f.read().split()]
        except FileNotFoundError:  # a thread that ended meanwhile
            continue
    return out


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="reads /proc")
def test_sigterm_to_the_process_group_drains_through_the_workers(tmp_path):
    db = tmp_path / "g.duckdb"
    side = db.with_name(db.name + ".collector.json")
    proc = subprocess.Popen(
        [sys.executable, "-m", "trace_ptune.cli.main", "collector", "run", "--db", str(db),
         "--http", "127.0.0.1:0", "--grpc", "off", "--quiet", "--workers", "1"],
        start_new_session=True, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while not side.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        url = json.loads(side.read_text())["urls"]["http"]
        body = span_request([{"attrs": generation_attrs()} for _ in range(3)]).SerializeToString()
        assert post(url + "/v1/traces", body, PB)[0] == 200
        workers = [p for p in _children(proc.pid) if b"spawn_main" in Path(f"/proc/{p}/cmdline").read_bytes()]
        assert len(workers) == 1
        # a SIGTERM reaching the worker leaves it converting: the collector stops it after draining
        os.kill(workers[0], signal.SIGTERM)
        time.sleep(0.3)
        assert post(url + "/v1/traces", body, PB)[0] == 200
        assert os.path.exists(f"/proc/{workers[0]}")
        acknowledged = CollectorClient(url).query("SELECT count(*) FROM spans")[1][0][0]
        assert acknowledged == 6
        os.killpg(proc.pid, signal.SIGTERM)  # as systemd stops a unit: every process of the group
        assert proc.wait(30) == 0, proc.stderr.read().decode()
        deadline = time.monotonic() + 10
        while os.path.exists(f"/proc/{workers[0]}") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not os.path.exists(f"/proc/{workers[0]}")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    con = duckdb.connect(str(db), read_only=True)
    assert con.execute("SELECT count(*) FROM spans").fetchone()[0] == acknowledged
    con.close()
