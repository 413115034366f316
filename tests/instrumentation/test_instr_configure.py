"""configure(): OTEL_* variables honoured, user providers kept, one warning, no hang on exit."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.trace import TracerProvider

from trace_ptune import paths, telemetry

_OTEL_VARS = [k for k in os.environ if k.startswith("OTEL_")]
_REAL_PORT_OPEN = telemetry._port_open


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in _OTEL_VARS:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setattr(telemetry, "_port_open", lambda host, port: False)  # no stray local collector
    telemetry._reset_for_tests()


def _explicit() -> dict[str, Any]:
    """Fresh providers, so nothing global changes in this process."""
    return dict(
        tracer_provider=TracerProvider(shutdown_on_exit=False),
        meter_provider=MeterProvider(shutdown_on_exit=False),
        logger_provider=LoggerProvider(shutdown_on_exit=False),
        set_global=False,
    )


def _span_exporters(provider: TracerProvider) -> list[Any]:
    found = []
    for processor in provider._active_span_processor._span_processors:
        batch = getattr(processor, "_batch_processor", None)
        found.append((processor, batch._exporter if batch else processor.span_exporter))
    return found


def _run(script: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    full_env.update(env)
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_endpoint_protocol_headers_and_exporter_list_come_from_the_environment(monkeypatch):
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcSpanExporter
    from opentelemetry.sdk.trace.export import ConsoleSpanExporter

    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector.example:4317")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "authorization=Bearer%20abc,x-team=ml")
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp,console")
    providers = _explicit()
    result = telemetry.configure(**providers)
    (batch, otlp), (_, console) = _span_exporters(providers["tracer_provider"])
    assert isinstance(otlp, GrpcSpanExporter) and isinstance(console, ConsoleSpanExporter)
    assert otlp._endpoint == "collector.example:4317"
    assert dict(otlp._headers) == {"authorization": "Bearer abc", "x-team": "ml"}
    assert batch._batch_processor._max_queue_size == 65536  # sized for training loops
    assert result.endpoint == "http://collector.example:4317" and result.protocol == "grpc"


def test_http_is_the_default_protocol_and_bsp_variables_win(monkeypatch):
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpSpanExporter

    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4999/")
    monkeypatch.setenv("OTEL_BSP_MAX_QUEUE_SIZE", "1000")
    providers = _explicit()
    telemetry.configure(**providers)
    [(batch, exporter)] = _span_exporters(providers["tracer_provider"])
    assert isinstance(exporter, HttpSpanExporter)
    assert exporter._endpoint == "http://127.0.0.1:4999/v1/traces"
    assert batch._batch_processor._max_queue_size == 1000


def test_traces_exporter_none_exports_nothing(monkeypatch):
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4999")
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "none")
    providers = _explicit()
    result = telemetry.configure(**providers)
    assert _span_exporters(providers["tracer_provider"]) == []
    assert not result.exporting


def test_nothing_configured_warns_once_and_exports_nothing(caplog):
    with caplog.at_level(logging.WARNING, logger="trace_ptune.telemetry"):
        first = telemetry.configure(**_explicit())
        second = telemetry.configure(**_explicit())
    assert first.endpoint is None and second.endpoint is None
    assert not first.exporting
    assert len([r for r in caplog.records if "No OTLP endpoint" in r.getMessage()]) == 1


def test_a_live_local_collector_named_by_the_side_file_gets_the_spans_and_its_token(monkeypatch):
    import http.server
    import threading

    received: list[tuple[str, str | None]] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            received.append((self.path, self.headers.get("authorization")))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    side = paths.collector_side_file(paths.default_db())
    side.parent.mkdir(parents=True, exist_ok=True)
    # the format trace_ptune.collector.server writes
    side.write_text(json.dumps({"urls": {"http": url, "grpc": "http://127.0.0.1:1"}, "pid": os.getpid()}))
    monkeypatch.setenv("TRACE_PTUNE_TOKEN", "s3cret")
    try:
        providers = _explicit()
        result = telemetry.configure(**providers)
        assert result.endpoint == url
        providers["tracer_provider"].get_tracer("t").start_span("s").end()
        assert result.force_flush()
    finally:
        server.shutdown()
        server.server_close()
    assert received == [("/v1/traces", "Bearer s3cret")]
    side.write_text(json.dumps({"urls": {"http": url}, "pid": 2**22 + 12345}))  # a dead collector
    assert telemetry.configure(**_explicit()).endpoint is None


def test_a_collector_listening_on_the_default_port_is_found(monkeypatch):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    try:
        assert _REAL_PORT_OPEN("127.0.0.1", port)
        probed: list[tuple[str, int]] = []
        monkeypatch.setattr(telemetry, "_port_open", lambda host, p: probed.append((host, p)) or True)
        assert telemetry.configure(**_explicit()).endpoint == telemetry.DEFAULT_LOCAL_ENDPOINT
        assert probed == [("127.0.0.1", 4318)]
    finally:
        listener.close()
    assert not _REAL_PORT_OPEN("127.0.0.1", port)


def test_resource_and_sampler_variables_and_idempotence_in_a_fresh_process():
    proc = _run(
        """
        import json
        from opentelemetry import trace
        import trace_ptune
        t = trace_ptune.configure()
        provider = trace.get_tracer_provider()
        print(json.dumps({
            "attrs": dict(provider.resource.attributes),
            "sampler": type(provider.sampler).__name__,
            "same": trace_ptune.configure() is t and provider is t.tracer_provider,
            "exporters": {k: list(v) for k, v in t.exporters.items()},
        }))
        """,
        {
            "OTEL_SERVICE_NAME": "svc-a",
            "OTEL_RESOURCE_ATTRIBUTES": "team=ml,deployment.environment=test",
            "OTEL_TRACES_SAMPLER": "always_off",
            "OTEL_TRACES_EXPORTER": "console",
            "OTEL_METRICS_EXPORTER": "none",
            "OTEL_LOGS_EXPORTER": "none",
        },
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["attrs"]["service.name"] == "svc-a"
    assert out["attrs"]["team"] == "ml"
    assert out["sampler"] == "StaticSampler"  # always_off
    assert out["same"] is True
    assert out["exporters"] == {"traces": ["console"]}


def test_providers_the_user_already_set_are_not_clobbered():
    proc = _run(
        """
        from opentelemetry import trace, metrics
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.metrics import MeterProvider
        mine, my_meter = TracerProvider(), MeterProvider()
        trace.set_tracer_provider(mine)
        metrics.set_meter_provider(my_meter)
        import trace_ptune
        t = trace_ptune.configure(endpoint="http://127.0.0.1:9")
        assert trace.get_tracer_provider() is mine and t.tracer_provider is mine
        assert metrics.get_meter_provider() is my_meter
        assert mine._active_span_processor._span_processors == ()
        print("kept", t.reused)
        """,
        {},
    )
    assert proc.returncode == 0, proc.stderr
    assert "kept ('traces', 'metrics')" in proc.stdout


def test_exit_never_hangs_on_an_endpoint_that_never_answers(tmp_path: Path):
    # A listener that accepts connections (the kernel does) but never reads or replies.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    port = listener.getsockname()[1]
    try:
        proc = _run(
            """
            import trace_ptune
            from trace_ptune.telemetry import get_meter, get_tracer
            trace_ptune.configure()
            tracer = get_tracer()
            for i in range(500):
                with tracer.start_as_current_span("work") as span:
                    pass
            trace_ptune.score(span, "x", 1.0)  # an ended span: a log record, exported at exit
            get_meter().create_counter("c").add(1)
            print("done")
            """,
            {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}", "OTEL_EXPORTER_OTLP_TIMEOUT": "30"},
            timeout=60,  # a hang fails here; the bounded exit flush takes a few seconds at most
        )
    finally:
        listener.close()
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "done"
    assert "Traceback" not in proc.stderr
