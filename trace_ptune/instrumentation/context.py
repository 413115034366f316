"""Request-scoped tenant / deployment / traffic for instrumented calls, and base-model identity.

Where the values of ``ptune.tenant``, ``ptune.deployment`` and ``ptune.traffic`` come from, the
first found winning:

1. a ``with trace_ptune.tags(tenant=..., deployment=...)`` block (innermost first);
2. OpenTelemetry baggage ``ptune.tenant`` / ``ptune.deployment`` / ``ptune.traffic`` (set by an
   upstream service and propagated with the request);
3. the defaults given to ``trace_ptune.instrument(tenant=..., deployment=...)``.

Example::

    with trace_ptune.tags(tenant="acme", deployment="acme/support@prod"):
        model.generate(**inputs)

``tags(operation="chat")`` also names the GenAI operation of the generations inside the block
(``chat {base}`` spans): ``generate()`` sees token ids and cannot tell a chat template from plain
text. A text-generation pipeline called with chat messages sets it by itself.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from opentelemetry import baggage

from trace_ptune import semconv
from trace_ptune.errors import ConfigError

_TAG_KEYS = {
    "tenant": semconv.PTUNE_TENANT,
    "deployment": semconv.PTUNE_DEPLOYMENT,
    "traffic": semconv.PTUNE_TRAFFIC,
}
_EMPTY: dict[str, str] = {}
_tags: ContextVar[dict[str, str]] = ContextVar("trace_ptune_tags", default=_EMPTY)
_defaults: dict[str, str] = {}  # from instrument(tenant=..., deployment=...)
# The prompt-learning adapter of the PeftModel.generate() call in progress (set by the PEFT
# instrumentor, read by the transformers one when the base model's generate() runs inside it).
active_adapter: ContextVar[Any] = ContextVar("trace_ptune_active_adapter", default=None)
# The GenAI operation of the generations in progress (None: text_completion). Set by
# tags(operation=...) and by the transformers instrumentor around a pipeline call with chat input;
# read once per generate() call.
current_operation: ContextVar[str | None] = ContextVar("trace_ptune_operation", default=None)
_OPERATIONS = (semconv.GEN_AI_OPERATION_CHAT, semconv.GEN_AI_OPERATION_TEXT_COMPLETION)


@contextmanager
def tags(
    *,
    tenant: str | None = None,
    deployment: str | None = None,
    traffic: str | None = None,
    operation: str | None = None,
) -> Iterator[None]:
    """Tag every instrumented generation inside the block with tenant / deployment / traffic.

    ``operation`` (``"chat"`` or ``"text_completion"``) sets the generations' GenAI operation:
    ``model.generate(**tokenizer.apply_chat_template(..., return_dict=True))`` is a chat request
    that ``generate()`` cannot recognise from the token ids alone.
    """
    if traffic is not None and traffic not in semconv.TRAFFIC_KINDS:
        raise ConfigError(
            f"traffic {traffic!r} is not one of {', '.join(semconv.TRAFFIC_KINDS)}; pick one of those."
        )
    if operation is not None and operation not in _OPERATIONS:
        raise ConfigError(
            f"operation {operation!r} is not one of {', '.join(_OPERATIONS)}; pick one of those."
        )
    added = {
        key: str(value)
        for key, value in (
            (semconv.PTUNE_TENANT, tenant),
            (semconv.PTUNE_DEPLOYMENT, deployment),
            (semconv.PTUNE_TRAFFIC, traffic),
        )
        if value is not None
    }
    token = _tags.set({**_tags.get(), **added})
    op_token = current_operation.set(operation) if operation is not None else None
    try:
        yield
    finally:
        if op_token is not None:
            current_operation.reset(op_token)
        _tags.reset(token)


def set_defaults(*, tenant: str | None = None, deployment: str | None = None) -> None:
    """Process-wide defaults (what ``instrument(tenant=, deployment=)`` sets); None clears one."""
    for key, value in ((semconv.PTUNE_TENANT, tenant), (semconv.PTUNE_DEPLOYMENT, deployment)):
        if value is None:
            _defaults.pop(key, None)
        else:
            _defaults[key] = str(value)


def current_tags() -> dict[str, str]:
    """The tenant / deployment / traffic attributes in force here (may be empty)."""
    scoped = _tags.get()
    found = baggage.get_all()
    if not found and not _defaults:
        return scoped
    merged = dict(_defaults)
    for key in _TAG_KEYS.values():
        value = found.get(key)
        if value is not None:
            merged[key] = str(value)
    merged.update(scoped)
    return merged


# ---------------------------------------------------------------- base-model identity


@dataclass(frozen=True)
class BaseIdentity:
    """What instrumentation reports about a base model (looked up once per model, not per call)."""

    name: str | None = None
    fingerprint: str | None = None
    tokenizer: Any = None


_identities: weakref.WeakKeyDictionary[Any, BaseIdentity] = weakref.WeakKeyDictionary()


def register_base_model(
    model: Any, *, name: str | None = None, fingerprint: str | None = None, tokenizer: Any = None
) -> None:
    """Tell instrumentation a model's contract name and fingerprint (never computed per call).

    ``trace_ptune.models.BaseModel`` objects can be passed as they are.
    """
    if hasattr(model, "fingerprint") and hasattr(model, "model"):  # a trace_ptune BaseModel
        name = name or model.name
        fingerprint = fingerprint or model.fingerprint
        tokenizer = tokenizer or model.tokenizer
        model = model.model
    _identities[model] = BaseIdentity(name=name, fingerprint=fingerprint, tokenizer=tokenizer)


def base_identity(model: Any) -> BaseIdentity | None:
    """The registered identity of ``model``, if any."""
    try:
        return _identities.get(model)
    except TypeError:  # unhashable or not weak-referenceable
        return None
