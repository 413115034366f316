"""Collector benchmark: OTLP/HTTP ingest throughput, CPU per span, bytes per span, query latency.

    python bench/bench_collector.py                       # everything (about 3 minutes on 2 cores)
    python bench/bench_collector.py --batches 200 --query-spans 10000000

Ingest: a separate sender process posts pre-encoded OTLP/HTTP protobuf batches of 512 realistic
spans (13 attributes and one ``gen_ai.evaluation.result`` event each) over 4 keep-alive
connections; the clock stops when the last batch is acknowledged, which the collector does only
after the commit, and the stored count is checked. Server CPU is read from /proc for the
collector process and its worker processes. The same sender then drives the anchor, a minimal
stdlib-HTTP + DuckDB receiver (parse, a flat walk, one Arrow insert per request), on the same
machine. A second sender uses the OpenTelemetry Python exporter instead of pre-encoded bytes.

Query: 10 million spans and their evaluations are generated with SQL straight into a DuckDB file,
then a per-adapter score aggregate is timed.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TICK = os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------- realistic spans


UUID_IDS = False  # --uuid-response-ids: the runtime's own response ids (gen-<UUIDv7 hex>), at 1,000 spans/s


def _response_id(seed: int, i: int) -> str:
    """Short sequential ids by default; with ``UUID_IDS`` the runtime's own (``gen-`` + a
    version-7 UUID: 48 bits of milliseconds, 74 random bits) as a server making 1,000
    generations a second writes them."""
    if not UUID_IDS:
        return f"resp-{seed}-{i}"
    from trace_ptune.runtime.requests import time_ordered_id

    return time_ordered_id("gen-", 1_796_000_000_000 + seed * 512 + i)


def make_batch(seed: int, n: int = 512, spans_per_trace: int = 1) -> bytes:
    """``n`` generation spans; ``spans_per_trace`` > 1 groups them as the rows of one
    ``ptune.generate`` call (same trace id and parent span), as the runtime emits them."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    from tests.collector.otlp_data import kv
    from trace_ptune import semconv as s

    rnd = random.Random(seed)
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    rs.resource.attributes.extend([kv("service.name", "ptune-serve"), kv("host.name", "node-1")])
    ss = rs.scope_spans.add()
    ss.scope.name, ss.scope.version = "trace_ptune", "0.1.0"
    now = time.time_ns()
    for i in range(n):
        sp = ss.spans.add()
        if i % spans_per_trace == 0:
            trace_id, parent = rnd.randbytes(16), rnd.randbytes(8)
        sp.trace_id, sp.span_id, sp.parent_span_id = trace_id, rnd.randbytes(8), parent
        sp.name, sp.kind = "text_completion smollm2-135m", 1
        sp.start_time_unix_nano = now + i * 1000
        sp.end_time_unix_nano = sp.start_time_unix_nano + rnd.randrange(20, 400) * 1_000_000
        a = rnd.randrange(8)
        sp.attributes.extend(
            [
                kv(s.GEN_AI_OPERATION_NAME, "text_completion"),
                kv(s.GEN_AI_PROVIDER_NAME, "transformers"),
                kv(s.GEN_AI_REQUEST_MODEL, "smollm2-135m"),
                kv(s.GEN_AI_RESPONSE_ID, _response_id(seed, i)),
                kv(s.GEN_AI_REQUEST_MAX_TOKENS, 64),
                kv(s.GEN_AI_REQUEST_TEMPERATURE, 0.0),
                kv(s.GEN_AI_USAGE_INPUT_TOKENS, rnd.randrange(10, 200)),
                kv(s.GEN_AI_USAGE_OUTPUT_TOKENS, rnd.randrange(1, 64)),
                kv(s.PTUNE_ADAPTER_HASH, "sha256:" + f"{a:064x}"),
                kv(s.PTUNE_ADAPTER_NAME, f"acme/support-{a}"),
                kv(s.PTUNE_ADAPTER_VERSION, 3),
                kv(s.PTUNE_DEPLOYMENT, f"acme/support-{a}@prod"),
                kv(s.PTUNE_TENANT, "acme"),
            ]
        )
        ev = sp.events.add()
        ev.name, ev.time_unix_nano = s.EVENT_EVALUATION_RESULT, sp.end_time_unix_nano
        ev.attributes.extend(
            [
                kv(s.GEN_AI_EVALUATION_NAME, "exact_match"),
                kv(s.GEN_AI_EVALUATION_SCORE_VALUE, float(rnd.random() < 0.8)),
            ]
        )
        sp.status.code = 1
    return req.SerializeToString()


# ---------------------------------------------------------------- sender process


def _time_workers(worker, connections: int, retries: list[int]) -> None:
    """Run ``worker`` on ``connections`` threads; print the wall time and retry count as JSON."""
    threads = [threading.Thread(target=worker) for _ in range(connections)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(json.dumps({"seconds": time.perf_counter() - t0, "retries": retries[0]}))


def _send_queue(args: argparse.Namespace) -> Callable[[], bytes | None]:
    """The pre-encoded bodies to send, one call per body (None when done), shared by threads.

    Every batch is distinct by default (unique response ids and token counts, as in
    production); --distinct N cycles N batches instead."""
    distinct = args.distinct or args.batches
    bodies = [
        make_batch(100_000 * args.seed + i, spans_per_trace=args.spans_per_trace) for i in range(distinct)
    ]
    todo = list(range(args.batches))
    lock = threading.Lock()

    def next_body() -> bytes | None:
        with lock:
            return bodies[todo.pop() % len(bodies)] if todo else None

    return next_body


def sender_main(args: argparse.Namespace) -> None:
    """Post pre-encoded batches over N keep-alive connections; print JSON timing."""
    host, port = args.target.split(":")
    next_body = _send_queue(args)
    retries = [0]

    def worker() -> None:
        conn = http.client.HTTPConnection(host, int(port), timeout=120)
        while (body := next_body()) is not None:
            while True:
                conn.request("POST", "/v1/traces", body, {"Content-Type": "application/x-protobuf"})
                resp = conn.getresponse()
                resp.read()
                if resp.status == 200:
                    break
                retries[0] += 1
                time.sleep(float(resp.getheader("Retry-After") or 0.2))
        conn.close()

    _time_workers(worker, args.connections, retries)


def grpc_sender_main(args: argparse.Namespace) -> None:
    """The same pre-encoded batches over OTLP/gRPC (TraceService/Export), N concurrent callers."""
    import grpc

    next_body = _send_queue(args)
    retries = [0]
    channel = grpc.insecure_channel(args.target)
    export = channel.unary_unary("/opentelemetry.proto.collector.trace.v1.TraceService/Export")

    def worker() -> None:
        while (body := next_body()) is not None:
            while True:
                try:
                    export(body, timeout=120)
                    break
                except grpc.RpcError as exc:
                    if exc.code() != grpc.StatusCode.UNAVAILABLE:
                        raise
                    retries[0] += 1
                    time.sleep(0.2)

    _time_workers(worker, args.connections, retries)


def exporter_sender_main(args: argparse.Namespace) -> None:
    """The OpenTelemetry Python exporter path: SDK spans -> OTLPSpanExporter, 4 threads."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace import TracerProvider

    from trace_ptune import semconv as s

    tp = TracerProvider()
    tracer = tp.get_tracer("bench")
    spans = []
    for i in range(512):
        with tracer.start_as_current_span("text_completion smollm2-135m") as sp:
            sp.set_attributes(
                {
                    s.GEN_AI_OPERATION_NAME: "text_completion",
                    s.GEN_AI_REQUEST_MODEL: "smollm2-135m",
                    s.GEN_AI_RESPONSE_ID: f"resp-{i}",
                    s.GEN_AI_USAGE_INPUT_TOKENS: 40 + i % 100,
                    s.GEN_AI_USAGE_OUTPUT_TOKENS: 1 + i % 60,
                    s.PTUNE_ADAPTER_HASH: "sha256:" + f"{i % 8:064x}",
                    s.PTUNE_ADAPTER_NAME: f"acme/support-{i % 8}",
                    s.PTUNE_ADAPTER_VERSION: 3,
                    s.PTUNE_DEPLOYMENT: "acme/support@prod",
                    s.PTUNE_TENANT: "acme",
                    s.GEN_AI_PROVIDER_NAME: "transformers",
                    s.GEN_AI_REQUEST_MAX_TOKENS: 64,
                    s.GEN_AI_REQUEST_TEMPERATURE: 0.0,
                }
            )
            sp.add_event(
                s.EVENT_EVALUATION_RESULT,
                {s.GEN_AI_EVALUATION_NAME: "em", s.GEN_AI_EVALUATION_SCORE_VALUE: 1.0},
            )
        spans.append(sp)
    todo = list(range(args.batches))
    lock = threading.Lock()

    def worker() -> None:
        exporter = OTLPSpanExporter(endpoint=f"http://{args.target}/v1/traces", timeout=120)
        while True:
            with lock:
                if not todo:
                    break
                todo.pop()
            exporter.export(spans)

    _time_workers(worker, args.connections, [0])


# ---------------------------------------------------------------- the anchor


def anchor_main(args: argparse.Namespace) -> None:
    """A minimal stdlib-HTTP + DuckDB receiver: parse, flat walk, one Arrow insert per request."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    import duckdb
    import pyarrow as pa
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
        ExportTraceServiceResponse,
    )

    con = duckdb.connect(args.db)
    con.execute(
        "CREATE TABLE spans (ts BIGINT, trace_id VARCHAR, span_id VARCHAR, name VARCHAR, dur BIGINT, attrs VARCHAR)"
    )
    lock = threading.Lock()
    ok = ExportTraceServiceResponse().SerializeToString()

    class H(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a):
            pass

        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            req = ExportTraceServiceRequest()
            req.ParseFromString(body)
            cols = ([], [], [], [], [], [])
            for rs in req.resource_spans:
                for ss in rs.scope_spans:
                    for s in ss.spans:
                        cols[0].append(s.start_time_unix_nano)
                        cols[1].append(s.trace_id.hex())
                        cols[2].append(s.span_id.hex())
                        cols[3].append(s.name)
                        cols[4].append(s.end_time_unix_nano - s.start_time_unix_nano)
                        cols[5].append(json.dumps({kv.key: kv.value.string_value for kv in s.attributes}))
            tbl = pa.table(
                dict(zip(("ts", "trace_id", "span_id", "name", "dur", "attrs"), cols, strict=True))
            )
            with lock:
                cur = con.cursor()
                cur.register("batch", tbl)
                cur.execute("INSERT INTO spans SELECT * FROM batch")
                cur.close()
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(ok)))
            self.end_headers()
            self.wfile.write(ok)

        def do_GET(self):
            n = con.cursor().execute("SELECT count(*) FROM spans").fetchone()[0]
            out = str(n).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

    srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
    print(srv.server_address[1], flush=True)
    srv.serve_forever()


# ---------------------------------------------------------------- orchestration


def cpu_seconds(pid: int) -> float:
    total = 0.0
    pids = [pid]
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                pids += [int(x) for x in f.read().split()]
    except OSError:
        pass
    for p in pids:
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / TICK
        except OSError:
            pass
    return total


def wait_side_file(db: Path, proc: subprocess.Popen) -> dict:
    side = db.with_name(db.name + ".collector.json")
    for _ in range(600):
        if side.exists():
            try:
                return json.loads(side.read_text())
            except ValueError:
                pass
        if proc.poll() is not None:
            raise SystemExit(proc.stderr.read().decode())
        time.sleep(0.05)
    raise SystemExit("collector did not start")


def run_sender(target: str, batches: int, mode: str, seed: int = 0) -> dict:
    cmd = [sys.executable, __file__, f"--{mode}", "--target", target, "--batches", str(batches)]
    cmd += ["--seed", str(seed), "--distinct", str(DISTINCT), "--spans-per-trace", str(SPANS_PER_TRACE)]
    cmd += ["--uuid-response-ids"] if UUID_IDS else []
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def bench_collector(tmp: Path, batches: int, workers: int, mode: str, walk: str = "native") -> dict:
    db = tmp / f"collector-{mode}-{workers}-{walk}.duckdb"
    env = dict(os.environ, TRACE_PTUNE_COLLECTOR_WALK=walk)
    grpc_addr = "127.0.0.1:0" if mode == "grpc-sender" else "off"
    proc = subprocess.Popen(
        [sys.executable, "-m", "trace_ptune.cli.main", "collector", "run", "--db", str(db),
         "--http", "127.0.0.1:0", "--grpc", grpc_addr, "--quiet", "--workers", str(workers)],
        stderr=subprocess.PIPE, env=env,
    )  # fmt: skip
    info = wait_side_file(db, proc)
    url = info["urls"]["http"]
    target = url.removeprefix("http://")
    if mode == "grpc-sender":
        target = info["urls"]["grpc"].removeprefix("grpc://").removeprefix("http://")
    time.sleep(2.0 if workers else 0.2)  # let worker processes finish importing
    # warm-up (attribute caches, worker start-up), not counted
    run_sender(target, 4, mode, seed=1)
    from trace_ptune.collector.client import CollectorClient

    client = CollectorClient(url)
    before = client.query("SELECT count(*) FROM spans")[1][0][0]
    stop, queries = threading.Event(), [0]

    def query_loop() -> None:  # --query-clients: a dashboard refreshing while spans arrive
        reader = CollectorClient(url)
        while not stop.is_set():
            reader.query(QUERY_LOAD_SQL)
            queries[0] += 1

    readers = [threading.Thread(target=query_loop, daemon=True) for _ in range(QUERY_CLIENTS)]
    for t in readers:
        t.start()
    cpu0 = cpu_seconds(proc.pid)
    res = run_sender(target, batches, mode)
    cpu1 = cpu_seconds(proc.pid)
    stop.set()
    for t in readers:
        t.join()
    stored = client.query("SELECT count(*) FROM spans")[1][0][0] - before
    total = client.query("SELECT count(*) FROM spans")[1][0][0]
    proc.terminate()
    proc.wait(120)
    size = db.stat().st_size
    n = batches * 512
    assert stored == n, (stored, n)
    return {
        "receiver": f"trace-ptune collector ({walk} walk, workers={workers})",
        "sender": mode,
        "spans": n,
        "seconds": round(res["seconds"], 2),
        "spans_per_s": round(n / res["seconds"]),
        "server_cpu_ms_per_1k": round(1000 * (cpu1 - cpu0) / n * 1000, 1),
        "bytes_per_span": round(size / total, 1),
        "retries": res["retries"],
        **({"query_clients": QUERY_CLIENTS, "queries": queries[0]} if QUERY_CLIENTS else {}),
    }


def bench_anchor(tmp: Path, batches: int) -> dict:
    db = tmp / "anchor.duckdb"
    proc = subprocess.Popen(
        [sys.executable, __file__, "--anchor", "--db", str(db)], stdout=subprocess.PIPE, text=True
    )
    port = int(proc.stdout.readline())
    target = f"127.0.0.1:{port}"
    run_sender(target, 4, "sender")
    cpu0 = cpu_seconds(proc.pid)
    res = run_sender(target, batches, "sender")
    cpu1 = cpu_seconds(proc.pid)
    n = batches * 512
    proc.terminate()
    proc.wait(30)
    return {
        "receiver": "anchor: minimal stdlib HTTP + DuckDB",
        "sender": "sender",
        "spans": n,
        "seconds": round(res["seconds"], 2),
        "spans_per_s": round(n / res["seconds"]),
        "server_cpu_ms_per_1k": round(1000 * (cpu1 - cpu0) / n * 1000, 1),
        "bytes_per_span": None,
        "retries": res["retries"],
    }


def bench_bytes(tmp: Path, batches: int, spans_per_trace: int) -> dict:
    """Bytes per span of a larger file: ``batches`` distinct 512-span batches through the
    collector's converter and writer (in process), checkpointed, file size / spans."""
    from trace_ptune.collector import otlp
    from trace_ptune.collector.store import Store

    db = tmp / f"bytes-{spans_per_trace}.duckdb"
    store = Store(db)
    conv = otlp.TraceConverter()
    tickets = []
    for i in range(batches):
        batch = conv.convert_bytes(make_batch(500_000 + i, spans_per_trace=spans_per_trace)).freeze()
        tickets.append(store.submit(batch, "spans"))
        if len(tickets) >= 32:
            for t in tickets:
                t.wait()
            tickets = []
    for t in tickets:
        t.wait()
    store.close()
    n = batches * 512
    return {"spans": n, "spans_per_trace": spans_per_trace, "bytes_per_span": round(db.stat().st_size / n, 1)}


def storage_breakdown(db: Path, top: int = 20) -> list[tuple[str, float]]:
    """Bytes per span of each column of a checkpointed file: every segment's extent in its
    block (from ``pragma_storage_info``'s offsets, up to the next segment or the block's end),
    summed per table.column and divided by the number of spans."""
    import collections

    import duckdb

    con = duckdb.connect(str(db), read_only=True)
    spans = con.execute("SELECT count(*) FROM spans").fetchone()[0] or 1
    by_block: dict[int, list[tuple]] = collections.defaultdict(list)
    for table in ("spans", "evaluations", "adapters", "metrics", "logs"):
        for column, offset, block, extra in con.execute(
            "SELECT column_name, block_offset, block_id, additional_block_ids "
            f"FROM pragma_storage_info('{table}') WHERE block_id >= 0"
        ).fetchall():
            by_block[block].append((offset, f"{table}.{column}", len(extra or [])))
    con.close()
    block = 256 * 1024 - 8  # DuckDB's block payload
    size: collections.Counter = collections.Counter()
    for segs in by_block.values():
        segs.sort()
        for i, (offset, name, extra) in enumerate(segs):
            end = segs[i + 1][0] if i + 1 < len(segs) else block
            size[name] += end - offset + block * extra
    return [(name, round(b / spans, 2)) for name, b in size.most_common(top)]


def bench_query(tmp: Path, n: int) -> dict:
    import duckdb

    from trace_ptune.collector.store import migrate

    db = tmp / "query.duckdb"
    con = duckdb.connect(str(db))
    migrate(con)
    t0 = time.perf_counter()
    con.execute(
        f"""
        INSERT INTO spans (Timestamp, TraceId, SpanId, ParentSpanId, SpanName, SpanKind, ServiceName, SpanAttributes,
            Duration, StatusCode, Events, adapter_hash, adapter_name, adapter_version, deployment, tenant,
            operation, request_model, input_tokens, output_tokens)
        SELECT TIMESTAMP '2025-01-01' + to_microseconds(i * 250), md5(i::VARCHAR), substr(md5((i * 7)::VARCHAR), 1, 16),
            '', 'text_completion smollm2-135m', 'Internal', 'ptune-serve',
            '{{"gen_ai.usage.input_tokens":' || (i % 190 + 10) || '}}', 20000000 + (i % 1000) * 100000, 'Ok', '[]',
            'sha256:' || lpad(((i // 100000) % 40)::VARCHAR, 64, '0'), 'acme/support-' || ((i // 100000) % 40),
            (i // 100000) % 40, 'acme/support@prod', 'tenant-' || (i % 5), 'text_completion', 'smollm2-135m',
            i % 190 + 10, i % 60 + 1
        FROM range({n}) t(i)
        """
    )
    con.execute(
        """
        INSERT INTO evaluations (Timestamp, TraceId, SpanId, source, name, score_value, adapter_hash, deployment, tenant)
        SELECT Timestamp, TraceId, SpanId, 'span_event', 'exact_match', CASE WHEN hash(SpanId) % 5 = 0 THEN 0 ELSE 1 END,
            adapter_hash, deployment, tenant FROM spans
        """
    )
    con.execute("CHECKPOINT")
    gen_s = time.perf_counter() - t0
    sql = (
        "SELECT adapter_hash, tenant, count(*) AS n, avg(score_value) AS mean FROM evaluations "
        "WHERE name = 'exact_match' AND Timestamp >= TIMESTAMP '2025-01-01' GROUP BY ALL ORDER BY mean"
    )
    join_sql = (
        "SELECT s.adapter_hash, avg(e.score_value) AS mean, avg(s.Duration) / 1e6 AS ms FROM spans s "
        "JOIN evaluations e USING (SpanId) WHERE s.Timestamp >= TIMESTAMP '2025-01-01' GROUP BY ALL"
    )
    times, join_times = [], []
    for _ in range(5):
        t = time.perf_counter()
        con.execute(sql).fetchall()
        times.append(time.perf_counter() - t)
    for _ in range(2):
        t = time.perf_counter()
        con.execute(join_sql).fetchall()
        join_times.append(time.perf_counter() - t)
    con.close()
    return {
        "spans": n,
        "generate_seconds": round(gen_s, 1),
        "aggregate_ms_median": round(1000 * sorted(times)[2], 1),
        "join_aggregate_ms_median": round(1000 * sorted(join_times)[1], 1),
        "file_bytes_per_span_generated": round(db.stat().st_size / n, 1),
    }


DISTINCT = 0
SPANS_PER_TRACE = 1
QUERY_CLIENTS = 0
# ~0.2 s of one core: a per-key aggregate over 3M rows, like a dashboard panel on a busy day
QUERY_LOAD_SQL = "SELECT count(DISTINCT i % 1000003) FROM range(3000000) t(i)"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sender", action="store_true")
    ap.add_argument("--grpc-sender", action="store_true")
    ap.add_argument("--exporter-sender", action="store_true")
    ap.add_argument("--anchor", action="store_true")
    ap.add_argument("--target")
    ap.add_argument("--db")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--distinct", type=int, default=0, help="cycle N pre-encoded batches (0: all distinct)")
    ap.add_argument("--walk", default="native,python", help="collector conversion walks to measure")
    ap.add_argument(
        "--spans-per-trace",
        type=int,
        default=1,
        help="rows per generate call sharing a trace (1: one-span traces)",
    )
    ap.add_argument("--connections", type=int, default=4)
    ap.add_argument("--batches", type=int, default=200)
    ap.add_argument("--exporter-batches", type=int, default=60)
    ap.add_argument("--query-spans", type=int, default=10_000_000)
    ap.add_argument("--workers", default="0,2")
    ap.add_argument("--skip-query", action="store_true")
    ap.add_argument(
        "--bytes-batches",
        type=int,
        default=0,
        help="also measure bytes/span over N batches (1 and 8 spans/trace)",
    )
    ap.add_argument(
        "--uuid-response-ids",
        action="store_true",
        help="the runtime's own response ids (gen-<UUIDv7 hex>, at 1,000 spans/s) instead of short sequential ones",
    )
    ap.add_argument(
        "--storage",
        action="store_true",
        help="with --bytes-batches: also print each column's bytes per span, largest first",
    )
    ap.add_argument(
        "--query-clients",
        type=int,
        default=0,
        help="clients looping a query on the collector while the sender runs (the anchor has no query API)",
    )
    args = ap.parse_args()
    global DISTINCT, SPANS_PER_TRACE, UUID_IDS, QUERY_CLIENTS
    DISTINCT, SPANS_PER_TRACE, UUID_IDS = args.distinct, args.spans_per_trace, args.uuid_response_ids
    QUERY_CLIENTS = args.query_clients
    if args.sender:
        return sender_main(args)
    if args.grpc_sender:
        return grpc_sender_main(args)
    if args.exporter_sender:
        return exporter_sender_main(args)
    if args.anchor:
        return anchor_main(args)
    results = []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        results.append(bench_anchor(tmp, args.batches))
        print(json.dumps(results[-1]), flush=True)
        for walk in args.walk.split(","):
            for w in [int(x) for x in args.workers.split(",")]:
                results.append(bench_collector(tmp, args.batches, w, "sender", walk))
                print(json.dumps(results[-1]), flush=True)
        for w in [int(x) for x in args.workers.split(",")]:
            results.append(bench_collector(tmp, args.batches, w, "grpc-sender"))
            print(json.dumps(results[-1]), flush=True)
        # the exporter sender with the collector's default on this machine (--workers auto)
        from trace_ptune.collector.ingest import auto_workers

        results.append(bench_collector(tmp, args.exporter_batches, auto_workers(), "exporter-sender"))
        print(json.dumps(results[-1]), flush=True)
        for k in (1, 8) if args.bytes_batches else ():
            print(json.dumps({"bytes": bench_bytes(tmp, args.bytes_batches, k)}), flush=True)
            if args.storage:
                print(json.dumps({"columns": storage_breakdown(tmp / f"bytes-{k}.duckdb")}), flush=True)
        if not args.skip_query:
            print(json.dumps({"query": bench_query(tmp, args.query_spans)}), flush=True)


if __name__ == "__main__":
    main()
