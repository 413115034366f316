"""trace-ptune: train, serve and trace soft prompts, and tie regressions to adapter versions.

Public API (re-exported lazily so ``import trace_ptune.collector`` never loads torch):

- ``configure()``: OpenTelemetry providers honouring the ``OTEL_*`` environment variables.
- ``instrument()`` / ``uninstrument()``: trace plain transformers, PEFT and the HF Trainer.
- ``tags()``: request-scoped tenant / deployment for instrumented calls.
- ``score()``: record a ``gen_ai.evaluation.result`` for a generation.
- ``load_model()``, ``SoftPrompt``, ``AdapterStore``: base models and the soft-prompt artifact.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from trace_ptune._lazy import lazy_exports

__version__ = "0.1.0"

# public name -> defining module
_EXPORTS: dict[str, str] = {
    "configure": "trace_ptune.telemetry",
    "get_tracer": "trace_ptune.telemetry",
    "instrument": "trace_ptune.instrumentation",
    "uninstrument": "trace_ptune.instrumentation",
    "tags": "trace_ptune.instrumentation.context",
    "score": "trace_ptune.instrumentation.scoring",
    "load_model": "trace_ptune.models",
    "BaseModel": "trace_ptune.models",
    "SoftPrompt": "trace_ptune.adapters.artifact",
    "AdapterStore": "trace_ptune.adapters.store",
    "TracePtuneError": "trace_ptune.errors",
}

__all__ = [
    "AdapterStore",
    "BaseModel",
    "SoftPrompt",
    "TracePtuneError",
    "__version__",
    "configure",
    "get_tracer",
    "instrument",
    "load_model",
    "score",
    "tags",
    "uninstrument",
]


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)


if TYPE_CHECKING:  # for type checkers and IDEs only
    from trace_ptune.adapters.artifact import SoftPrompt
    from trace_ptune.adapters.store import AdapterStore
    from trace_ptune.errors import TracePtuneError
    from trace_ptune.instrumentation import instrument, uninstrument
    from trace_ptune.instrumentation.context import tags
    from trace_ptune.instrumentation.scoring import score
    from trace_ptune.models import BaseModel, load_model
    from trace_ptune.telemetry import configure, get_tracer
