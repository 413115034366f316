"""Batched generation with per-row soft prompts on one base model.

``Engine`` (load a base once, register any number of soft prompts, ``generate(requests)`` with
requests for different adapters and methods mixed in one batch), ``GenerationRequest`` /
``GenerationResult``, and the step-by-step API (``Engine.start``/``add``/``step``) a server
schedules with. See ``docs/runtime.md``.

Names are imported lazily so ``import trace_ptune.runtime`` stays cheap until one is used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from trace_ptune._lazy import lazy_exports

_EXPORTS: dict[str, str] = {
    "Engine": "trace_ptune.runtime.engine",
    "BatchState": "trace_ptune.runtime.engine",
    "TokenEvent": "trace_ptune.runtime.engine",
    "GenerationRequest": "trace_ptune.runtime.requests",
    "GenerationResult": "trace_ptune.runtime.requests",
    "Score": "trace_ptune.runtime.requests",
    "AdapterRegistry": "trace_ptune.runtime.registry",
    "PromptKVCache": "trace_ptune.runtime.kvcache",
}

__all__ = [
    "AdapterRegistry",
    "BatchState",
    "Engine",
    "GenerationRequest",
    "GenerationResult",
    "PromptKVCache",
    "Score",
    "TokenEvent",
]

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)


if TYPE_CHECKING:
    from trace_ptune.runtime.engine import BatchState, Engine, TokenEvent
    from trace_ptune.runtime.kvcache import PromptKVCache
    from trace_ptune.runtime.registry import AdapterRegistry
    from trace_ptune.runtime.requests import GenerationRequest, GenerationResult, Score
