"""Name the soft prompt behind every PEFT prompt-learning generation.

Usage::

    from trace_ptune.instrumentation.peft import PeftInstrumentor

    PeftInstrumentor().instrument()
    peft_model.generate(**inputs)   # generation spans carry ptune.adapter.hash

or ``trace_ptune.instrument(deployment="acme/support@prod", tenant="acme")``, or
``opentelemetry-instrument`` (entry point ``trace_ptune_peft``).

It wraps ``PeftModel.generate`` and ``PeftModelForCausalLM.generate``. When the active adapter is
prompt tuning, prefix tuning or P-tuning, the adapter's content hash (the same one
``trace_ptune.adapters`` gives the artifact for the same tensors, see
:mod:`trace_ptune.instrumentation.peft_hash`) is computed once and cached until the tensors change
(a training step bumps the parameters' version counters). The generation spans the transformers
instrumentor creates inside the call then carry ``ptune.adapter.hash`` / ``.name`` / ``.method`` /
``.num_virtual_tokens``, ``ptune.usage.virtual_tokens`` and
``gen_ai.response.model = <base>+ptune:<hash12>``. Without the transformers instrumentor, the
same attributes go on the span current at the call, if any.

PEFT names almost every adapter ``default``, so the tenant and deployment come from you:
``instrument(tenant=..., deployment=...)``, ``trace_ptune.tags(...)`` or baggage
``ptune.tenant`` / ``ptune.deployment``.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from typing import Any

import wrapt
from opentelemetry import trace
from opentelemetry.instrumentation.instrumentor import BaseInstrumentor
from opentelemetry.instrumentation.utils import is_instrumentation_enabled, unwrap

from trace_ptune import semconv
from trace_ptune.instrumentation import context as _ctx
from trace_ptune.instrumentation import peft_hash
from trace_ptune.instrumentation import transformers as _tf
from trace_ptune.instrumentation._warn import warn_once

_log = logging.getLogger(__name__)

_INSTRUMENTS = ("peft >= 0.10",)
_MODULE = "peft.peft_model"
_TARGETS = ("PeftModel.generate", "PeftModelForCausalLM.generate")


class PeftInstrumentor(BaseInstrumentor):
    """Instrument PEFT prompt-learning generation (see the module docstring)."""

    def instrumentation_dependencies(self) -> Collection[str]:
        return _INSTRUMENTS

    def _instrument(self, **kwargs: Any) -> None:
        for target in _TARGETS:
            wrapt.wrap_function_wrapper(_MODULE, target, _wrap_peft_generate)

    def _uninstrument(self, **kwargs: Any) -> None:
        from peft import peft_model

        for target in _TARGETS:
            cls_name, _, attr = target.partition(".")
            unwrap(getattr(peft_model, cls_name), attr)


def _wrap_peft_generate(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    if _ctx.active_adapter.get() is not None or not is_instrumentation_enabled():
        return wrapped(*args, **kwargs)
    try:
        identity = peft_hash.adapter_identity(instance)
    except Exception as exc:
        warn_once(
            _log, "peft-hash", "trace-ptune could not hash the PEFT adapter: %r; spans will lack it.", exc
        )
        identity = None
    if identity is None:
        return wrapped(*args, **kwargs)
    if not _tf.is_active():
        _annotate_current_span(identity)
    token = _ctx.active_adapter.set(identity)
    try:
        return wrapped(*args, **kwargs)
    finally:
        _ctx.active_adapter.reset(token)


def _annotate_current_span(identity: peft_hash.AdapterIdentity) -> None:
    span = trace.get_current_span()
    if span.is_recording():
        span.set_attributes(identity.attributes)
        span.set_attribute(semconv.PTUNE_USAGE_VIRTUAL_TOKENS, identity.num_virtual_tokens)
