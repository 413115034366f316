"""OpenTelemetry set-up: ``configure()``, ``get_tracer()`` and ``get_meter()``.

``configure()`` installs tracer, meter and logger providers that export over OTLP, honouring the
standard environment variables:

- ``OTEL_EXPORTER_OTLP_ENDPOINT`` (and the per-signal ``OTEL_EXPORTER_OTLP_{TRACES,METRICS,LOGS}_ENDPOINT``),
  ``OTEL_EXPORTER_OTLP_PROTOCOL`` (``http/protobuf``, the default, or ``grpc``),
  ``OTEL_EXPORTER_OTLP_HEADERS``, ``OTEL_EXPORTER_OTLP_TIMEOUT``;
- ``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``;
- ``OTEL_TRACES_SAMPLER`` / ``OTEL_TRACES_SAMPLER_ARG``;
- ``OTEL_TRACES_EXPORTER`` / ``OTEL_METRICS_EXPORTER`` / ``OTEL_LOGS_EXPORTER``: ``otlp`` (default),
  ``console`` or ``none`` (comma-separated lists allowed);
- ``OTEL_BSP_*``: when unset, the span queue holds 65,536 spans so training loops drop nothing.

With no endpoint configured it looks for a local trace-ptune collector (``TRACE_PTUNE_COLLECTOR``,
the ``<db>.collector.json`` side file of the default database naming a live process, or anything
listening on ``127.0.0.1:4318``) and exports there over OTLP/HTTP, with ``TRACE_PTUNE_TOKEN`` as a
bearer token when set; otherwise it warns once and exports nothing (spans still
get real ids, so ``score()`` keeps working). Providers the user already installed are reused,
never replaced. Export timeouts are short and the exit-time flush is bounded, so a command never
hangs on exit waiting for an unreachable collector. Calling it again returns the same set-up.

Example::

    import trace_ptune

    trace_ptune.configure(service_name="support-bot")   # or just set OTEL_* variables
    trace_ptune.instrument()
"""

from __future__ import annotations

import atexit
import logging
import os
import socket
import sys
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from opentelemetry import metrics, trace
from opentelemetry.metrics import Meter, MeterProvider
from opentelemetry.trace import Tracer, TracerProvider

from trace_ptune import __version__, paths, semconv

_log = logging.getLogger(__name__)

DEFAULT_LOCAL_ENDPOINT = "http://127.0.0.1:4318"
_SPAN_QUEUE_SIZE = 65536  # a long training loop emits spans faster than one export drains them
_EXPORT_TIMEOUT_S = 3.0  # per export request; keeps exit-time flushes short
_EXIT_FLUSH_TIMEOUT_S = 3.0  # total time the exit handler may spend flushing all signals
_PROBE_TIMEOUT_S = 0.05
_PROTOCOLS = ("http/protobuf", "grpc")
_SIGNAL_PATHS = {"traces": "v1/traces", "metrics": "v1/metrics", "logs": "v1/logs"}

_lock = threading.Lock()
_state: Telemetry | None = None
_warned_no_endpoint = False
_exit_registered = False
_owned: list[Telemetry] = []  # set-ups whose providers we created: flushed at exit


def get_tracer(tracer_provider: TracerProvider | None = None) -> Tracer:
    """The trace-ptune tracer, with the GenAI semantic conventions' schema URL."""
    return trace.get_tracer(
        semconv.INSTRUMENTATION_NAME,
        __version__,
        tracer_provider=tracer_provider,
        schema_url=semconv.SCHEMA_URL,
    )


def get_meter(meter_provider: MeterProvider | None = None) -> Meter:
    """The trace-ptune meter, with the GenAI semantic conventions' schema URL."""
    return metrics.get_meter(
        semconv.INSTRUMENTATION_NAME,
        __version__,
        meter_provider=meter_provider,
        schema_url=semconv.SCHEMA_URL,
    )


def get_event_logger(logger_provider: Any = None) -> Any:
    """The trace-ptune OpenTelemetry logger (logs API), used for log-encoded events."""
    from opentelemetry import _logs

    return _logs.get_logger(
        semconv.INSTRUMENTATION_NAME,
        __version__,
        logger_provider=logger_provider,
        schema_url=semconv.SCHEMA_URL,
    )


@dataclass
class Telemetry:
    """What ``configure()`` set up: the three providers and where they export."""

    tracer_provider: Any
    meter_provider: Any
    logger_provider: Any
    endpoint: str | None  # OTLP base endpoint, or None when nothing goes over OTLP
    protocol: str
    exporters: dict[str, tuple[str, ...]] = field(default_factory=dict)  # signal -> exporter kinds
    reused: tuple[str, ...] = ()  # signals whose existing provider was kept as it was
    owned: tuple[str, ...] = ()  # signals whose provider configure() created

    @property
    def exporting(self) -> bool:
        """True when spans leave the process (OTLP or console)."""
        return bool(self.exporters.get("traces")) or "traces" in self.reused

    def force_flush(self, timeout_s: float = _EXIT_FLUSH_TIMEOUT_S) -> bool:
        """Flush every provider configure() touched, giving up after ``timeout_s`` in total."""
        return _bounded(self._providers(), "force_flush", timeout_s)

    def shutdown(self, timeout_s: float = _EXIT_FLUSH_TIMEOUT_S) -> bool:
        """Flush and shut down the providers configure() created (never ones the user set)."""
        owned = [p for signal, p in self._by_signal() if signal in self.owned]
        return _bounded(owned, "shutdown", timeout_s)

    def _by_signal(self) -> list[tuple[str, Any]]:
        return [
            ("traces", self.tracer_provider),
            ("metrics", self.meter_provider),
            ("logs", self.logger_provider),
        ]

    def _providers(self) -> list[Any]:
        return [p for _, p in self._by_signal() if p is not None]


def configure(
    service_name: str | None = None,
    endpoint: str | None = None,
    protocol: str | None = None,
    *,
    headers: Mapping[str, str] | str | None = None,
    tracer_provider: Any = None,
    meter_provider: Any = None,
    logger_provider: Any = None,
    set_global: bool = True,
    resource_attributes: Mapping[str, Any] | None = None,
    discover_local: bool = True,
    export_timeout_s: float | None = None,
) -> Telemetry:
    """Set up OpenTelemetry providers that export over OTLP; see the module docstring.

    Args:
        service_name: ``service.name``; defaults to ``OTEL_SERVICE_NAME``, else the script's name.
        endpoint: OTLP base endpoint (``http://host:4318``); overrides ``OTEL_EXPORTER_OTLP_ENDPOINT``.
        protocol: ``http/protobuf`` or ``grpc``; overrides ``OTEL_EXPORTER_OTLP_PROTOCOL``.
        headers: exporter headers (a mapping or ``"k=v,k2=v2"``); default ``OTEL_EXPORTER_OTLP_HEADERS``.
        tracer_provider / meter_provider / logger_provider: configure these instead of new ones.
            An SDK tracer or logger provider gets our exporters added; a meter provider is used
            as given (SDK meter providers cannot take readers after construction).
        set_global: install the providers as the global ones (never replacing an SDK provider
            the user already installed).
        resource_attributes: extra resource attributes (``OTEL_RESOURCE_ATTRIBUTES`` still applies).
        discover_local: look for a local collector when no endpoint is configured.
        export_timeout_s: per-request export timeout (default ``OTEL_EXPORTER_OTLP_TIMEOUT`` or 3 s).

    Returns:
        A :class:`Telemetry` naming the providers and where they export. Calling ``configure()``
        again with ``set_global=True`` returns the first set-up unchanged.
    """
    global _state
    explicit = tracer_provider is not None or meter_provider is not None or logger_provider is not None
    with _lock:
        if set_global and _state is not None and not explicit:
            return _state
        result = _build(
            service_name=service_name,
            endpoint=endpoint,
            protocol=protocol,
            headers=headers,
            tracer_provider=tracer_provider,
            meter_provider=meter_provider,
            logger_provider=logger_provider,
            set_global=set_global,
            resource_attributes=resource_attributes,
            discover_local=discover_local,
            export_timeout_s=export_timeout_s,
        )
        if set_global and not explicit:
            _state = result
        if result.owned:
            _owned.append(result)
            _register_exit_handler()
        return result


def _reset_for_tests() -> None:
    """Forget the cached set-up and the warn-once flag (tests only)."""
    global _state, _warned_no_endpoint
    with _lock:
        _state = None
        _warned_no_endpoint = False


# ---------------------------------------------------------------- building the providers


@dataclass(frozen=True)
class _Export:
    """Where and how every signal is exported: resolved once from arguments and ``OTEL_*``."""

    kinds: Mapping[str, tuple[str, ...]]  # signal -> exporter kinds ("otlp", "console")
    base: str | None  # OTEL_EXPORTER_OTLP_ENDPOINT (signal paths appended for HTTP)
    signal_endpoints: Mapping[str, str | None]  # OTEL_EXPORTER_OTLP_<SIGNAL>_ENDPOINT, used as given
    proto: str
    headers: Any
    timeout: float
    resource: Any

    def exporter(self, signal: str) -> Any:
        return _otlp_exporter(
            signal, self.base, self.signal_endpoints[signal], self.proto, self.headers, self.timeout
        )


def _build(
    *,
    service_name: str | None,
    endpoint: str | None,
    protocol: str | None,
    headers: Mapping[str, str] | str | None,
    tracer_provider: Any,
    meter_provider: Any,
    logger_provider: Any,
    set_global: bool,
    resource_attributes: Mapping[str, Any] | None,
    discover_local: bool,
    export_timeout_s: float | None,
) -> Telemetry:
    from opentelemetry.sdk.trace import TracerProvider as SDKTracerProvider

    kinds = {signal: _exporter_kinds(signal) for signal in _SIGNAL_PATHS}
    proto = _protocol(protocol)
    base = endpoint or _env("OTEL_EXPORTER_OTLP_ENDPOINT")
    signal_endpoints = {
        signal: (None if endpoint else _env(f"OTEL_EXPORTER_OTLP_{signal.upper()}_ENDPOINT"))
        for signal in _SIGNAL_PATHS
    }
    wants_otlp = any("otlp" in k for k in kinds.values())
    discovered = False
    if wants_otlp and not base and not any(signal_endpoints.values()):
        base = _discover_local_collector() if discover_local else None
        if base is not None:
            proto = "http/protobuf"  # what the local collector serves
            discovered = True
        else:
            _warn_no_endpoint_once()
            kinds = {signal: tuple(k for k in ks if k != "otlp") for signal, ks in kinds.items()}
    timeout = export_timeout_s if export_timeout_s is not None else _export_timeout()
    hdrs = _parse_headers(headers) if headers is not None else None
    token = _env(semconv.ENV_TOKEN)
    if discovered and hdrs is None and token and not _env("OTEL_EXPORTER_OTLP_HEADERS"):
        hdrs = {"authorization": f"Bearer {token}"}  # a local collector started with --token
    export = _Export(
        kinds=kinds,
        base=base,
        signal_endpoints=signal_endpoints,
        proto=proto,
        headers=hdrs,
        timeout=timeout,
        resource=_resource(service_name, resource_attributes),
    )

    owned: list[str] = []
    reused: list[str] = []
    exporters: dict[str, tuple[str, ...]] = {}

    # ---- traces
    current = trace.get_tracer_provider()
    if tracer_provider is None and isinstance(current, SDKTracerProvider):
        tracer_provider = current
        reused.append("traces")
    else:
        if tracer_provider is None:
            tracer_provider = SDKTracerProvider(resource=export.resource, shutdown_on_exit=False)
            owned.append("traces")
            if set_global:
                trace.set_tracer_provider(tracer_provider)
        if hasattr(tracer_provider, "add_span_processor"):
            exporters["traces"] = kinds["traces"]
            for processor in _span_processors(export):
                tracer_provider.add_span_processor(processor)

    # ---- metrics
    meter_provider, metric_state = _meter_provider(meter_provider, export, set_global)
    if metric_state == "owned":
        owned.append("metrics")
        exporters["metrics"] = kinds["metrics"]
    elif metric_state == "reused":
        reused.append("metrics")

    # ---- logs
    logger_provider, log_state = _logger_provider(logger_provider, export, set_global)
    if log_state in ("owned", "configured"):
        exporters["logs"] = kinds["logs"]
        if log_state == "owned":
            owned.append("logs")
    elif log_state == "reused":
        reused.append("logs")

    any_otlp = any("otlp" in ks for ks in exporters.values())
    return Telemetry(
        tracer_provider=tracer_provider,
        meter_provider=meter_provider,
        logger_provider=logger_provider,
        endpoint=(base or signal_endpoints["traces"]) if any_otlp else None,
        protocol=proto,
        exporters={k: v for k, v in exporters.items() if v},
        reused=tuple(reused),
        owned=tuple(owned),
    )


def _span_processors(export: _Export) -> list[Any]:
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SimpleSpanProcessor

    processors: list[Any] = []
    if "otlp" in export.kinds["traces"]:
        exporter = export.exporter("traces")
        queue = None if _env("OTEL_BSP_MAX_QUEUE_SIZE") else _SPAN_QUEUE_SIZE
        export_timeout = None if _env("OTEL_BSP_EXPORT_TIMEOUT") else int(export.timeout * 1000)
        processors.append(
            BatchSpanProcessor(exporter, max_queue_size=queue, export_timeout_millis=export_timeout)
        )
    if "console" in export.kinds["traces"]:
        processors.append(SimpleSpanProcessor(ConsoleSpanExporter()))
    return processors


def _meter_provider(given: Any, export: _Export, set_global: bool) -> tuple[Any, str]:
    from opentelemetry.sdk.metrics import MeterProvider as SDKMeterProvider
    from opentelemetry.sdk.metrics.export import ConsoleMetricExporter, PeriodicExportingMetricReader

    if given is not None:
        return given, "given"
    current = metrics.get_meter_provider()
    if isinstance(current, SDKMeterProvider):
        return current, "reused"
    readers = []
    if "otlp" in export.kinds["metrics"]:
        exporter = export.exporter("metrics")
        readers.append(PeriodicExportingMetricReader(exporter, export_timeout_millis=export.timeout * 1000))
    if "console" in export.kinds["metrics"]:
        readers.append(PeriodicExportingMetricReader(ConsoleMetricExporter()))
    provider = SDKMeterProvider(resource=export.resource, metric_readers=readers, shutdown_on_exit=False)
    if set_global:
        metrics.set_meter_provider(provider)
    return provider, "owned"


def _logger_provider(given: Any, export: _Export, set_global: bool) -> tuple[Any, str]:
    from opentelemetry import _logs
    from opentelemetry.sdk._logs import LoggerProvider as SDKLoggerProvider
    from opentelemetry.sdk._logs.export import (
        BatchLogRecordProcessor,
        ConsoleLogRecordExporter,
        SimpleLogRecordProcessor,
    )

    state = "configured"
    if given is None:
        current = _logs.get_logger_provider()
        if isinstance(current, SDKLoggerProvider):
            return current, "reused"
        given = SDKLoggerProvider(resource=export.resource, shutdown_on_exit=False)
        state = "owned"
        if set_global:
            _logs.set_logger_provider(given)
    if not hasattr(given, "add_log_record_processor"):
        return given, "given"
    if "otlp" in export.kinds["logs"]:
        exporter = export.exporter("logs")
        given.add_log_record_processor(
            BatchLogRecordProcessor(exporter, export_timeout_millis=int(export.timeout * 1000))
        )
    if "console" in export.kinds["logs"]:
        given.add_log_record_processor(SimpleLogRecordProcessor(ConsoleLogRecordExporter()))
    return given, state


def _otlp_exporter(
    signal: str, base: str | None, signal_endpoint: str | None, proto: str, hdrs: Any, timeout: float
) -> Any:
    """An OTLP exporter for one signal. ``signal_endpoint`` is used as given, ``base`` gets the path."""
    if proto == "grpc":
        url = signal_endpoint or base
        if signal == "traces":
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as Grpc
        elif signal == "metrics":
            from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter as Grpc
        else:
            from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter as Grpc
        return Grpc(endpoint=url, headers=hdrs, timeout=timeout)
    url = signal_endpoint or f"{(base or DEFAULT_LOCAL_ENDPOINT).rstrip('/')}/{_SIGNAL_PATHS[signal]}"
    if signal == "traces":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as Http
    elif signal == "metrics":
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter as Http
    else:
        from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter as Http
    return Http(endpoint=url, headers=hdrs, timeout=timeout)


def _resource(service_name: str | None, extra: Mapping[str, Any] | None) -> Any:
    from opentelemetry.sdk.resources import Resource

    attributes: dict[str, Any] = dict(extra or {})
    if service_name:
        attributes["service.name"] = service_name
    elif not _env("OTEL_SERVICE_NAME") and "service.name=" not in (_env("OTEL_RESOURCE_ATTRIBUTES") or ""):
        attributes.setdefault("service.name", _default_service_name())
    # Resource.create merges OTEL_RESOURCE_ATTRIBUTES / OTEL_SERVICE_NAME under what we pass.
    return Resource.create(attributes)


def _default_service_name() -> str:
    script = Path(sys.argv[0]).stem if sys.argv and sys.argv[0] not in ("", "-c", "-m") else ""
    return script or "trace-ptune"


# ---------------------------------------------------------------- environment


def _env(name: str) -> str | None:
    value = os.environ.get(name)
    return value.strip() if value and value.strip() else None


def _exporter_kinds(signal: str) -> tuple[str, ...]:
    raw = _env(f"OTEL_{signal.upper()}_EXPORTER") or "otlp"
    kinds: list[str] = []
    for item in (part.strip().lower() for part in raw.split(",")):
        if item in ("otlp", "console"):
            kinds.append(item)
        elif item not in ("none", ""):
            _log.warning(
                "OTEL_%s_EXPORTER=%s is not supported here; use otlp, console or none.", signal.upper(), item
            )
    if "none" in raw.lower().split(","):
        return ()
    return tuple(dict.fromkeys(kinds))


def _protocol(explicit: str | None) -> str:
    value = (
        explicit or _env("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or _env("OTEL_EXPORTER_OTLP_PROTOCOL") or ""
    )
    value = value.lower() or "http/protobuf"
    if value == "http/json":
        _log.warning("OTLP protocol http/json is not supported; using http/protobuf.")
        return "http/protobuf"
    if value not in _PROTOCOLS:
        from trace_ptune.errors import ConfigError

        raise ConfigError(f"OTLP protocol {value!r} is not supported; use 'http/protobuf' or 'grpc'.")
    return value


def _export_timeout() -> float:
    raw = _env("OTEL_EXPORTER_OTLP_TIMEOUT")
    if raw:
        try:
            # The spec says milliseconds; the Python SDK has historically read seconds. Values
            # above 120 are taken as milliseconds.
            value = float(raw)
            return value / 1000.0 if value > 120 else value
        except ValueError:
            _log.warning("OTEL_EXPORTER_OTLP_TIMEOUT=%r is not a number; using %s s.", raw, _EXPORT_TIMEOUT_S)
    return _EXPORT_TIMEOUT_S


def _parse_headers(headers: Mapping[str, str] | str) -> dict[str, str]:
    if isinstance(headers, Mapping):
        return {str(k): str(v) for k, v in headers.items()}
    from urllib.parse import unquote

    parsed: dict[str, str] = {}
    for part in headers.split(","):
        key, sep, value = part.partition("=")
        if sep and key.strip():
            parsed[unquote(key.strip())] = unquote(value.strip())
    return parsed


def _warn_no_endpoint_once() -> None:
    global _warned_no_endpoint
    if _warned_no_endpoint:
        return
    _warned_no_endpoint = True
    _log.warning(
        "No OTLP endpoint is configured and no local collector answered, so telemetry is not exported; "
        "set OTEL_EXPORTER_OTLP_ENDPOINT or start one with `trace-ptune collector run`."
    )


# ---------------------------------------------------------------- local collector discovery


def _discover_local_collector() -> str | None:
    """The OTLP/HTTP endpoint of a local collector, or None (never blocks for long).

    Looked for in this order: ``TRACE_PTUNE_COLLECTOR`` (the collector's HTTP URL, which also
    takes OTLP), the side file of the default database naming a live process, then anything
    listening on ``127.0.0.1:4318``.
    """
    explicit = _env(semconv.ENV_COLLECTOR)
    if explicit and explicit.startswith(("http://", "https://")):
        return explicit.rstrip("/").removesuffix("/v1/traces")
    url = _side_file_endpoint(paths.default_db())
    if url:
        return url
    return DEFAULT_LOCAL_ENDPOINT if _port_open("127.0.0.1", 4318) else None


def _side_file_endpoint(db: Path) -> str | None:
    info = paths.live_collector(db)
    url = info["urls"].get("http") if info else None
    return url if isinstance(url, str) else None


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=_PROBE_TIMEOUT_S):
            return True
    except OSError:
        return False


# ---------------------------------------------------------------- bounded flush / shutdown


def _bounded(providers: list[Any], method: str, timeout_s: float) -> bool:
    """Call ``method`` on each provider in daemon threads and wait at most ``timeout_s`` in total.

    A flush stuck on an unreachable endpoint then cannot hold the process: daemon threads die
    with the interpreter.
    """
    threads = []
    for provider in providers:
        fn = getattr(provider, method, None)
        if fn is None:
            continue
        thread = threading.Thread(
            target=_quietly, args=(fn, method), daemon=True, name=f"trace-ptune-{method}"
        )
        thread.start()
        threads.append(thread)
    deadline = _monotonic() + timeout_s
    for thread in threads:
        thread.join(max(0.0, deadline - _monotonic()))
    return not any(t.is_alive() for t in threads)


def _quietly(fn: Any, method: str) -> None:
    try:
        if method == "force_flush":
            fn(int(_EXIT_FLUSH_TIMEOUT_S * 1000))
        else:
            fn()
    except Exception as exc:  # exporter failures at exit must not print tracebacks
        _log.debug("telemetry %s failed: %s", method, exc)


def _monotonic() -> float:
    import time

    return time.monotonic()


def _register_exit_handler() -> None:
    global _exit_registered
    if not _exit_registered:
        _exit_registered = True
        atexit.register(_shutdown_at_exit)


def _shutdown_at_exit() -> None:
    providers: list[Any] = []
    for setup in _owned:
        providers.extend(p for signal, p in setup._by_signal() if signal in setup.owned)
    if providers:
        _bounded(providers, "shutdown", _EXIT_FLUSH_TIMEOUT_S)


class Configurator:
    """``opentelemetry_configurator`` entry point: ``opentelemetry-instrument`` runs ``configure()``.

    Select it explicitly with ``OTEL_PYTHON_CONFIGURATOR=trace_ptune`` when another distribution
    also registers a configurator.
    """

    def configure(self, **kwargs: Any) -> None:
        configure()
