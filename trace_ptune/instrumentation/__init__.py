"""Trace plain transformers, PEFT and the Hugging Face Trainer with one line.

Usage::

    import trace_ptune

    trace_ptune.configure()            # OTLP export (OTEL_* variables honoured); optional
    trace_ptune.instrument(deployment="acme/support@prod", tenant="acme")
    ...                                # existing PEFT / Trainer / generate() code, unchanged
    trace_ptune.uninstrument()

or, with no code change at all::

    OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4318 opentelemetry-instrument python train.py

``instrument()`` turns on every instrumentor whose library is installed:

- :class:`~trace_ptune.instrumentation.transformers.TransformersInstrumentor`: ``generate()`` spans;
- :class:`~trace_ptune.instrumentation.peft.PeftInstrumentor`: the soft prompt's hash on them;
- :class:`~trace_ptune.instrumentation.trainer.HFTrainerInstrumentor`: ``ptune.train`` /
  ``ptune.train.step`` / ``ptune.eval`` / ``ptune.checkpoint`` from the Trainer.

Environment: ``OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT=true`` records prompt and
completion text (off by default); ``OTEL_PYTHON_DISABLED_INSTRUMENTATIONS`` (for
``opentelemetry-instrument``) takes the entry point names ``trace_ptune_transformers``,
``trace_ptune_peft`` and ``trace_ptune_hf_trainer``.
"""

from __future__ import annotations

import importlib.util
import logging
from typing import Any

from trace_ptune.instrumentation.context import register_base_model, set_defaults, tags
from trace_ptune.instrumentation.scoring import last_response_ids, register_generation, score

__all__ = [
    "instrument",
    "instrumentors",
    "last_response_ids",
    "register_base_model",
    "register_generation",
    "score",
    "tags",
    "uninstrument",
]

_log = logging.getLogger(__name__)

# (library that must be importable, "module:class")
_INSTRUMENTORS = (
    ("transformers", "trace_ptune.instrumentation.transformers:TransformersInstrumentor"),
    ("peft", "trace_ptune.instrumentation.peft:PeftInstrumentor"),
    ("transformers", "trace_ptune.instrumentation.trainer:HFTrainerInstrumentor"),
)


def instrumentors() -> list[Any]:
    """The instrumentor singletons whose target library is installed."""
    found = []
    for library, target in _INSTRUMENTORS:
        if importlib.util.find_spec(library) is None:
            continue
        module_name, _, cls_name = target.partition(":")
        found.append(getattr(importlib.import_module(module_name), cls_name)())
    return found


def instrument(
    tracer_provider: Any = None,
    meter_provider: Any = None,
    capture_content: bool | None = None,
    deployment: str | None = None,
    tenant: str | None = None,
) -> list[str]:
    """Turn on every trace-ptune instrumentor whose library is installed.

    Args:
        tracer_provider / meter_provider: where telemetry goes (default: the global providers;
            call ``trace_ptune.configure()`` first to export over OTLP).
        capture_content: record prompt and completion text; default from
            ``OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT``.
        deployment / tenant: default ``ptune.deployment`` / ``ptune.tenant`` for every generation
            (``trace_ptune.tags()`` and baggage override them per request).

    Returns:
        Class names of the instrumentors now on. Calling it again only updates the defaults.
    """
    set_defaults(tenant=tenant, deployment=deployment)
    active = []
    for instrumentor in instrumentors():
        if not instrumentor.is_instrumented_by_opentelemetry:
            instrumentor.instrument(
                tracer_provider=tracer_provider,
                meter_provider=meter_provider,
                capture_content=capture_content,
            )
        if instrumentor.is_instrumented_by_opentelemetry:
            active.append(type(instrumentor).__name__)
    return active


def uninstrument() -> None:
    """Turn every trace-ptune instrumentor off, restoring the original functions."""
    for instrumentor in instrumentors():
        if instrumentor.is_instrumented_by_opentelemetry:
            instrumentor.uninstrument()
    set_defaults(tenant=None, deployment=None)
