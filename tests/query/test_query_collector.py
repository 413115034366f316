"""The same queries through a running collector, and end to end from the OpenTelemetry SDK."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from tests.query.traffic import Traffic, default_traffic, send_otel
from trace_ptune.errors import TracePtuneError
from trace_ptune.query import open_source, regressions
from trace_ptune.query.adapters import adapters
from trace_ptune.query.source import CollectorSource, FileSource

server = pytest.importorskip(
    "trace_ptune.collector.server", reason="the collector has no runnable server yet"
)
from tests.query.collector_harness import running_collector  # noqa: E402


@pytest.fixture
def served_copy(traffic_db: Path, tmp_path: Path) -> Path:
    db = tmp_path / "served.duckdb"
    shutil.copy(traffic_db, db)
    return db


def test_collector_and_file_give_the_same_rows(traffic_db: Path, served_copy: Path) -> None:
    with open_source(db=traffic_db) as source:
        direct = regressions(source, lower_is_better=["toxicity"])
        direct_adapters = adapters(source)
    # --db names a file whose side file points at a live collector: reads go through it
    with running_collector(served_copy), open_source(db=served_copy) as source:
        assert isinstance(source, CollectorSource)
        assert regressions(source, lower_is_better=["toxicity"]) == direct
        assert adapters(source) == direct_adapters
    # once it stopped, the same --db opens the file read-only
    with open_source(db=served_copy) as source:
        assert isinstance(source, FileSource)


def test_collector_token_is_required_and_used(served_copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with running_collector(served_copy, token="s3cret") as collector:
        url = collector.urls["http"]
        with (
            open_source(collector=url, token="wrong") as source,
            pytest.raises(TracePtuneError, match="token"),
        ):
            regressions(source)
        monkeypatch.setenv("TRACE_PTUNE_TOKEN", "s3cret")
        monkeypatch.setenv("TRACE_PTUNE_COLLECTOR", url)
        with open_source() as source:
            assert len(regressions(source)) > 0


def _otel_providers(url: str):  # type: ignore[no-untyped-def]
    from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(
        BatchSpanProcessor(
            OTLPSpanExporter(endpoint=f"{url}/v1/traces"),
            max_queue_size=100_000,
            max_export_batch_size=2_000,
            schedule_delay_millis=100,
        )
    )
    logger_provider = LoggerProvider()
    logger_provider.add_log_record_processor(
        BatchLogRecordProcessor(
            OTLPLogExporter(endpoint=f"{url}/v1/logs"), max_queue_size=100_000, max_export_batch_size=2_000
        )
    )
    return tracer_provider, logger_provider


def test_end_to_end_from_the_otel_sdk_through_a_real_collector(tmp_path: Path) -> None:
    traffic: Traffic = default_traffic(seed=7, no_change_streams=5, neutral_swaps=2)
    total_scores = sum(len(r.scores) for r in traffic.requests)
    with running_collector(tmp_path / "e2e.duckdb") as collector:
        url = collector.urls["http"]
        tracer_provider, logger_provider = _otel_providers(url)
        send_otel(traffic, tracer_provider, logger_provider)
        tracer_provider.shutdown()  # flushes
        logger_provider.shutdown()
        with open_source(collector=url) as source:
            deadline = time.monotonic() + 60
            while source.query("SELECT count(*) FROM evaluations")[1][0][0] < total_scores:
                assert time.monotonic() < deadline, "the collector did not store every score"
                time.sleep(0.2)
            late = source.query("SELECT count(*), count(adapter_hash) FROM evaluations WHERE source = 'log'")
            rows = regressions(source, lower_is_better=["toxicity"])
    n_late, n_late_with_adapter = late[1][0]
    assert n_late > 0 and n_late == n_late_with_adapter  # late scores joined to their spans
    expected = {(e.stream, e.metric): e for e in traffic.expected if e.traffic == "production"}
    assert sorted((r["stream"], r["metric"]) for r in rows) == sorted(expected)
    for row in rows:
        e = expected[(row["stream"], row["metric"])]
        assert (row["cause"], row["before_hash"], row["after_hash"]) == (e.cause, e.before_hash, e.after_hash)
        assert (row["before_base_fingerprint"], row["after_base_fingerprint"]) == (
            e.before_base,
            e.after_base,
        )
