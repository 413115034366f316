"""trace-ptune: train, serve and trace soft prompts, and tie regressions to adapter versions.

Public API (re-exported lazily so ``import trace_ptune.collector`` never loads torch):

- ``configure()``: OpenTelemetry providers honouring the ``OTEL_*`` environment variables.
- ``instrument()`` / ``uninstrument()``: trace plain transformers, PEFT and the HF Trainer.
- ``tags()``: request-scoped tenant / deployment for instrumented calls.
- ``score()``: record a ``gen_ai.evaluation.result`` for a generation.
- ``load_model()``, ``SoftPrompt``, ``AdapterStore``: base models and the soft-prompt artifact.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> "module:attribute"
_EXPORTS: dict[str, str] = {
    "configure": "trace_ptune.telemetry:configure",
    "get_tracer": "trace_ptune.telemetry:get_tracer",
    "instrument": "trace_ptune.instrumentation:instrument",
    "uninstrument": "trace_ptune.instrumentation:uninstrument",
    "tags": "trace_ptune.instrumentation.context:tags",
    "score": "trace_ptune.instrumentation.scoring:score",
    "load_model": "trace_ptune.models:load_model",
    "BaseModel": "trace_ptune.models:BaseModel",
    "SoftPrompt": "trace_ptune.adapters.artifact:SoftPrompt",
    "AdapterStore": "trace_ptune.adapters.store:AdapterStore",
    "TracePtuneError": "trace_ptune.errors:TracePtuneError",
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


def __getattr__(name: str) -> Any:  # PEP 562: load heavy modules on first use only
    target = _EXPORTS.get(name)
    if target is None:
        raise AttributeError(f"module 'trace_ptune' has no attribute {name!r}")
    module_name, _, attr = target.partition(":")
    value = getattr(importlib.import_module(module_name), attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


if TYPE_CHECKING:  # for type checkers and IDEs only
    from trace_ptune.adapters.artifact import SoftPrompt
    from trace_ptune.adapters.store import AdapterStore
    from trace_ptune.errors import TracePtuneError
    from trace_ptune.instrumentation import instrument, uninstrument
    from trace_ptune.instrumentation.context import tags
    from trace_ptune.instrumentation.scoring import score
    from trace_ptune.models import BaseModel, load_model
    from trace_ptune.telemetry import configure, get_tracer
