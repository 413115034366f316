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


@contextmanager
def tags(
    *, tenant: str | None = None, deployment: str | None = None, traffic: str | None = None
) -> Iterator[None]:
    """Tag every instrumented generation inside the block with tenant / deployment / traffic."""
    if traffic is not None and traffic not in semconv.TRAFFIC_KINDS:
        raise ConfigError(
            f"traffic {traffic!r} is not one of {', '.join(semconv.TRAFFIC_KINDS)}; pick one of those."
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
    try:
        yield
    finally:
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
