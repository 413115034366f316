"""Benchmark ``trace-ptune query``: regressions over 10M spans / 1M evaluations, and cold start.

Usage::

    python bench/bench_query.py                 # 10M spans, 1M evaluations
    python bench/bench_query.py --spans 1000000 --evaluations 100000 --db /tmp/q.duckdb

The database is built with SQL inside DuckDB (seconds, not minutes): every second span is a
``ptune.generate`` call span, the other its ``text_completion`` child; one in five generations
carries a score. 300 streams (30 tenants x 10 deployments), three metrics; every tenth stream
swaps to a worse adapter half-way, every tenth (offset 1) changes its base model under the same
adapter, every tenth (offset 2) runs a worse canary, the rest are unchanged.
Timings: ``regressions()`` directly on the file, through a running collector when
``trace_ptune.collector`` can start one, and ``trace-ptune query --help`` cold start.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STREAMS = 300
DAYS = 30


def build_database(path: Path, spans: int = 10_000_000, evaluations: int = 1_000_000) -> None:
    """Write ``spans`` spans and ``evaluations`` evaluations into a new DuckDB file at ``path``."""
    import duckdb

    from trace_ptune.collector.schema import MIGRATIONS

    if path.exists():
        path.unlink()
    con = duckdb.connect(str(path))
    con.execute("SET enable_progress_bar = false")
    for _, statements in MIGRATIONS:
        for ddl in statements:
            con.execute(ddl)
    requests = spans // 2
    every = max(1, requests // evaluations)
    step_us = DAYS * 86_400_000_000 // requests
    con.execute("SELECT setseed(0.42)")
    # One row per request: stream, time and the version that served it.
    con.execute(
        f"""
        CREATE TEMP TABLE req AS
        SELECT r, s, t, frac,
               CASE
                 WHEN s % 10 = 0 AND frac >= 0.5 THEN 2                       -- swap
                 WHEN s % 10 = 2 AND frac >= 0.5 THEN 2                       -- canary done
                 WHEN s % 10 = 2 AND frac >= 0.4 AND hash(r) % 10 = 0 THEN 2  -- 10% canary
                 ELSE 1 END AS v,
               CASE WHEN s % 10 = 1 AND frac >= 0.6 THEN 'b' ELSE 'a' END AS base
        FROM (SELECT range AS r, (hash(range * 7919) % {STREAMS})::INTEGER AS s,
                     TIMESTAMP '2025-01-01' + to_microseconds(range * {step_us}) AS t,
                     range / {requests}::DOUBLE AS frac
              FROM range({requests}))
        """
    )
    common = """
        lpad(to_hex(r), 32, '0') AS TraceId,
        'tenant-' || (s % 30) AS tenant, 'dep-' || (s // 30) AS deployment,
        'sha256:' || sha256('adapter-' || s || '-' || v) AS adapter_hash,
        'adapter-' || s AS adapter_name, v AS adapter_version,
        'sha256:' || sha256('base-' || base) AS base_fingerprint
    """
    con.execute(
        f"""
        INSERT INTO spans (Timestamp, TraceId, SpanId, ParentSpanId, SpanName, SpanKind, ServiceName,
                           SpanAttributes, Duration, StatusCode, Events, adapter_hash, adapter_name,
                           adapter_version, deployment, tenant, traffic, base_model_name,
                           base_fingerprint, operation, request_model, response_id, input_tokens,
                           output_tokens, virtual_tokens)
        SELECT t, TraceId, lpad(to_hex(r * 2), 16, '0'), '', 'ptune.generate', 'Internal', 'bench',
               '{{}}', 2000000, 'Unset', '[]', NULL, NULL, NULL, deployment, tenant, NULL, NULL, NULL,
               NULL, NULL, NULL, NULL, NULL, NULL
        FROM (SELECT r, t, {common} FROM req)
        UNION ALL
        SELECT t + INTERVAL 1 MILLISECOND, TraceId, lpad(to_hex(r * 2 + 1), 16, '0'),
               lpad(to_hex(r * 2), 16, '0'), 'text_completion smollm2-135m', 'Internal', 'bench',
               '{{"gen_ai.operation.name":"text_completion","ptune.tenant":"' || tenant || '"}}',
               1500000, 'Unset', '[]', adapter_hash, adapter_name, adapter_version, deployment,
               tenant, NULL, 'smollm2-135m', base_fingerprint, 'text_completion', 'smollm2-135m',
               'resp-' || r, 20, 16, 8
        FROM (SELECT r, t, {common} FROM req)
        ORDER BY 1
        """
    )
    con.execute(
        f"""
        INSERT INTO evaluations (Timestamp, TraceId, SpanId, source, name, score_value, response_id,
                                 adapter_hash, adapter_name, deployment, tenant, traffic,
                                 base_fingerprint, ServiceName, Attributes)
        SELECT t + INTERVAL 2 MILLISECOND, TraceId, lpad(to_hex(r * 2 + 1), 16, '0'), 'span_event',
               metric,
               CASE WHEN metric = 'f1'
                    THEN least(1.0, greatest(0.0, 0.7 - penalty + 0.15 * (random() + random() - 1)))
                    ELSE (random() < 0.8 - penalty)::DOUBLE END,
               'resp-' || r, adapter_hash, adapter_name, deployment, tenant, NULL, base_fingerprint,
               'bench', '{{}}'
        FROM (SELECT r, t, {common},
                     ['exact_match', 'f1', 'contains'][(r // {every}) % 3 + 1] AS metric,
                     CASE WHEN v = 2 AND s % 10 IN (0, 2) THEN 0.08
                          WHEN base = 'b' THEN 0.08 ELSE 0.0 END AS penalty
              FROM req WHERE r % {every} = 0)
        """
    )
    con.execute(
        """
        INSERT INTO adapters
        SELECT adapter_hash, any_value(adapter_name), any_value(adapter_version), NULL,
               'prompt_tuning', 20, 'smollm2-135m', min(base_fingerprint), min(Timestamp),
               max(Timestamp)
        FROM spans WHERE adapter_hash IS NOT NULL GROUP BY adapter_hash
        """
    )
    con.execute("CHECKPOINT")
    con.close()


def _time(fn, repeat: int) -> dict[str, float]:
    """Wall and process CPU seconds (all threads): CPU time is less sensitive to a shared machine."""
    wall, cpu = [], []
    for _ in range(repeat):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return {
        "median": round(statistics.median(wall), 3),
        "min": round(min(wall), 3),
        "cpu_median": round(statistics.median(cpu), 3),
    }


def _cold_start(repeat: int) -> list[float]:
    exe = Path(sys.executable).with_name("trace-ptune")
    cmd = (
        [str(exe), "query", "--help"]
        if exe.exists()
        else [sys.executable, "-m", "trace_ptune.cli.main", "query", "--help"]
    )
    out = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        out.append(time.perf_counter() - start)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spans", type=int, default=10_000_000)
    parser.add_argument("--evaluations", type=int, default=1_000_000)
    parser.add_argument("--db", type=Path, default=None, help="reuse/build this file")
    parser.add_argument("--rebuild", action="store_true")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    from trace_ptune.query import regressions
    from trace_ptune.query.source import open_source

    db = args.db or Path(tempfile.gettempdir()) / f"bench-query-{args.spans}.duckdb"
    result: dict = {"spans": args.spans, "evaluations": args.evaluations, "db": str(db)}
    if args.rebuild or not db.exists():
        start = time.perf_counter()
        build_database(db, args.spans, args.evaluations)
        result["build_s"] = round(time.perf_counter() - start, 1)
    result["db_mb"] = round(db.stat().st_size / 2**20, 1)

    with open_source(db=db) as src:
        rows = regressions(src)
        result["file_regressions_s"] = _time(lambda: regressions(src), args.repeat)
    result["rows"] = len(rows)
    result["causes"] = {c: sum(r["cause"] == c for r in rows) for c in sorted({r["cause"] for r in rows})}

    collector = _collector_timing(db, args.repeat)
    if collector is not None:
        result["collector_regressions_s"] = collector
    cold = _cold_start(args.repeat)
    result["query_help_cold_start_s"] = {
        "median": round(statistics.median(cold), 3),
        "min": round(min(cold), 3),
    }
    result["load_average_1m"] = round(os.getloadavg()[0], 1)
    result["machine"] = (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    )
    print(json.dumps(result, indent=2))


def _collector_timing(db: Path, repeat: int) -> dict | str | None:
    """Time ``regressions()`` through a collector serving ``db``, when one can be started."""
    try:
        from tests.query.collector_harness import running_collector
    except Exception as exc:  # no runnable collector yet
        return f"skipped: {exc}"
    from trace_ptune.query import regressions
    from trace_ptune.query.source import open_source

    try:
        with running_collector(db) as collector, open_source(collector=collector.urls["http"]) as src:
            regressions(src)
            return _time(lambda: regressions(src), repeat)
    except Exception as exc:
        return f"skipped: {exc}"


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    main()
