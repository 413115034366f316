"""OpenTelemetry set-up: ``configure()`` and ``get_tracer()``.

(configure() is completed in the foundation work; get_tracer() is final.)
"""

from __future__ import annotations

from opentelemetry import trace
from opentelemetry.trace import Tracer, TracerProvider

from trace_ptune import __version__, semconv


def get_tracer(tracer_provider: TracerProvider | None = None) -> Tracer:
    """The trace-ptune tracer, with the GenAI semantic conventions' schema URL."""
    return trace.get_tracer(
        semconv.INSTRUMENTATION_NAME,
        __version__,
        tracer_provider=tracer_provider,
        schema_url=semconv.SCHEMA_URL,
    )
