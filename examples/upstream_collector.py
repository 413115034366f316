"""Send trace-ptune's spans to an upstream OpenTelemetry Collector, configured only by OTLP env vars.

In production, applications export plain OTLP to an OpenTelemetry Collector, which fans the data
out (``collector/otelcol-tempo.yaml``, ``collector/otelcol-clickhouse.yaml``); nothing in the
application names trace-ptune. Point the standard variables at the upstream collector::

    export OTEL_EXPORTER_OTLP_ENDPOINT=http://otelcol-host:4317
    export OTEL_EXPORTER_OTLP_PROTOCOL=grpc              # or http/protobuf (port 4318)
    export OTEL_EXPORTER_OTLP_HEADERS="authorization=Bearer%20<token>"   # if it wants one
    export OTEL_SERVICE_NAME=support-bot
    export OTEL_RESOURCE_ATTRIBUTES=deployment.environment=prod
    python examples/upstream_collector.py

Run with no ``OTEL_EXPORTER_OTLP_ENDPOINT`` and it starts a trace-ptune collector on a temporary
DuckDB file to stand in for the upstream one (same OTLP/gRPC wire), sets the variables above for
itself, and checks afterwards that every span arrived, with its resource attributes.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

os.environ.setdefault("TRACE_PTUNE_HOME", tempfile.mkdtemp(prefix="trace-ptune-upstream-"))

import trace_ptune
from trace_ptune.models import load_model
from trace_ptune.runtime import Engine, GenerationRequest


@contextlib.contextmanager
def stand_in_upstream() -> Iterator[object | None]:
    """A local collector on free ports when no upstream is configured; None when one is."""
    if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        yield None
        return
    from trace_ptune.collector import Collector, CollectorConfig

    db = Path(tempfile.mkdtemp(prefix="upstream-")) / "traces.duckdb"
    collector = Collector(CollectorConfig(db=db, http="127.0.0.1:0", grpc="127.0.0.1:0", quiet=True)).start()
    os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = collector.urls["grpc"]  # http://127.0.0.1:<port>
    os.environ["OTEL_EXPORTER_OTLP_PROTOCOL"] = "grpc"
    os.environ.setdefault("OTEL_SERVICE_NAME", "support-bot")
    os.environ.setdefault("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=example")
    print(f"no OTEL_EXPORTER_OTLP_ENDPOINT: standing in with a local collector on {collector.urls['grpc']}")
    try:
        yield collector
    finally:
        collector.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny-random")
    parser.add_argument("--requests", type=int, default=8)
    args = parser.parse_args()

    with stand_in_upstream() as local:
        telemetry = trace_ptune.configure()  # reads every OTEL_* variable; nothing else to set
        print(f"exporting to {telemetry.endpoint} over {telemetry.protocol}")

        engine = Engine(load_model(args.model))
        prompts = [f"Ticket {i}: my order has not arrived.\nTeam:" for i in range(args.requests)]
        results = engine.generate([GenerationRequest(p, tenant="globex", max_new_tokens=4) for p in prompts])
        print(f"generated {len(results)} completions; trace {results[0].trace_id}")
        if not telemetry.force_flush(timeout_s=30):
            raise SystemExit("the upstream collector did not accept the spans within 30 s")

        if local is not None:  # check what the stand-in received
            from trace_ptune.collector import CollectorClient

            cols, rows = CollectorClient(local.urls["http"]).query(
                "SELECT ServiceName, count(*), any_value(ResourceAttributes) FROM spans "
                "WHERE operation IS NOT NULL GROUP BY 1"
            )
            print(dict(zip(cols, rows[0], strict=True)))
            service, count, resource = rows[0]
            assert service == os.environ["OTEL_SERVICE_NAME"] and count == args.requests
            assert "deployment.environment" in str(resource)


if __name__ == "__main__":
    main()
