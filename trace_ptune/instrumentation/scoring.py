"""``score()``: record a ``gen_ai.evaluation.result`` for one generation.

The target can be an open span, a ``SpanContext``, a response id (``gen_ai.response.id``), or a
generation result object with a ``.response_id`` attribute (``trace_ptune.runtime``'s
``GenerationResult``). The score is encoded as the span contract says:

- while the scored span is still open: an event ``gen_ai.evaluation.result`` on that span;
- after it ended: a log record with event name ``gen_ai.evaluation.result`` emitted in the scored
  span's trace/span context (the OpenTelemetry GenAI convention), through the global
  ``LoggerProvider`` that ``trace_ptune.configure()`` installs.

Either way the record carries copies of the scored span's ``ptune.adapter.hash``,
``ptune.tenant``, ``ptune.deployment`` and ``ptune.base_model.fingerprint``, so the collector can
attribute it without a join. Instrumented generations (and the runtime, through
:func:`register_generation`) are remembered in a bounded map so scores can arrive later by id.

Example::

    out = model.generate(**inputs)
    [rid] = trace_ptune.instrumentation.last_response_ids()
    trace_ptune.score(rid, "helpfulness", 0.8, label="good")
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict, deque
from collections.abc import Mapping
from contextvars import ContextVar
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, Span, SpanContext

from trace_ptune import semconv
from trace_ptune.errors import ConfigError

# Attributes of the scored span copied onto its scores.
COPIED_ATTRIBUTES = (
    semconv.PTUNE_ADAPTER_HASH,
    semconv.PTUNE_TENANT,
    semconv.PTUNE_DEPLOYMENT,
    semconv.PTUNE_BASE_MODEL_FINGERPRINT,
)
MAX_REMEMBERED = 16384


class Generation:
    """What a later score needs to know about one generation."""

    __slots__ = ("attributes", "response_id", "span_context", "span_ref")

    def __init__(
        self,
        response_id: str,
        span_context: SpanContext,
        attributes: Mapping[str, Any],
        span_ref: Any = None,
    ) -> None:
        self.response_id = response_id
        self.span_context = span_context
        self.attributes = attributes  # the COPIED_ATTRIBUTES that were present
        self.span_ref = span_ref  # weak reference to the live span, while it may still be open

    @property
    def span(self) -> Span | None:
        return self.span_ref() if self.span_ref is not None else None


class _Registry:
    """A bounded LRU map: response id -> Generation, plus a (trace id, span id) index.

    Instrumented calls only append to ``_incoming`` (:meth:`add_later`), a deque bounded to the
    same capacity; the map takes them in on the next lookup. The generate() path pays one append,
    not the lock and index updates, and with no lookups the oldest fall off in order, as the
    map's own eviction would drop them.
    """

    def __init__(self, capacity: int = MAX_REMEMBERED) -> None:
        self._capacity = capacity
        self._by_id: OrderedDict[str, Generation] = OrderedDict()
        self._by_span: dict[tuple[int, int], str] = {}
        self._lock = threading.Lock()
        self._incoming: deque[Generation] = deque(maxlen=capacity)

    def add_later(self, generation: Generation) -> None:
        self._incoming.append(generation)

    def _take_incoming(self) -> None:
        """Move the waiting generations into the map, oldest first; hold ``self._lock``."""
        pop = self._incoming.popleft
        while True:
            try:
                generation = pop()
            except IndexError:
                return
            self._add(generation)

    def add(self, generation: Generation) -> None:
        with self._lock:
            self._take_incoming()
            self._add(generation)

    def _add(self, generation: Generation) -> None:
        ctx = generation.span_context
        old = self._by_id.pop(generation.response_id, None)
        if old is not None:
            self._by_span.pop((old.span_context.trace_id, old.span_context.span_id), None)
        self._by_id[generation.response_id] = generation
        self._by_span[(ctx.trace_id, ctx.span_id)] = generation.response_id
        while len(self._by_id) > self._capacity:
            _, evicted = self._by_id.popitem(last=False)
            key = (evicted.span_context.trace_id, evicted.span_context.span_id)
            if self._by_span.get(key) == evicted.response_id:
                del self._by_span[key]

    def get(self, response_id: str) -> Generation | None:
        with self._lock:
            self._take_incoming()
            return self._by_id.get(response_id)

    def for_span(self, ctx: SpanContext) -> Generation | None:
        with self._lock:
            self._take_incoming()
            rid = self._by_span.get((ctx.trace_id, ctx.span_id))
            return self._by_id.get(rid) if rid is not None else None

    def __len__(self) -> int:
        with self._lock:
            self._take_incoming()
            return len(self._by_id)

    def clear(self) -> None:
        with self._lock:
            self._incoming.clear()
            self._by_id.clear()
            self._by_span.clear()


_registry = _Registry()
_last_ids: ContextVar[tuple[str, ...]] = ContextVar("trace_ptune_last_response_ids", default=())


def register_generation(
    response_id: str,
    span_context: SpanContext,
    attrs: Mapping[str, Any] | None = None,
    *,
    span: Span | None = None,
) -> None:
    """Remember a generation so ``score(response_id, ...)`` can find it later.

    ``attrs`` may be the span's full attribute mapping: only the copied keys are kept. Pass
    ``span`` when the span is still open, so scores made before it ends become span events.
    """
    kept = copied_attributes(attrs)
    ref = None
    if span is not None:
        try:
            ref = weakref.ref(span)
        except TypeError:  # a span type without weak-reference support: keep it while remembered
            ref = lambda: span  # noqa: E731
    _registry.add(
        Generation(response_id=response_id, span_context=span_context, attributes=kept, span_ref=ref)
    )


def copied_attributes(attrs: Mapping[str, Any] | None) -> dict[str, Any]:
    """The attributes of a generation span that its scores carry too."""
    if not attrs:
        return {}
    return {k: attrs[k] for k in COPIED_ATTRIBUTES if attrs.get(k) is not None}


def _remember(response_id: str, span_context: SpanContext, kept: Mapping[str, Any]) -> None:
    """register_generation() for instrumentation: ``kept`` already filtered, no live span."""
    _registry.add_later(Generation(response_id, span_context, kept))


def lookup_generation(response_id: str) -> Generation | None:
    """The remembered generation with this ``gen_ai.response.id``, if still in the map."""
    return _registry.get(response_id)


def last_response_ids() -> tuple[str, ...]:
    """Response ids of the most recent instrumented ``generate()`` call in this context."""
    return _last_ids.get()


def _set_last_response_ids(ids: tuple[str, ...]) -> None:
    _last_ids.set(ids)


def score(
    target: Any,
    name: str,
    value: float | int | bool | None,
    label: str | None = None,
    explanation: str | None = None,
    *,
    logger_provider: Any = None,
) -> None:
    """Record a ``gen_ai.evaluation.result`` for one generation (see the module docstring).

    Args:
        target: an open ``Span``, a ``SpanContext``, a response id string, or an object with a
            ``response_id`` attribute.
        name: the metric (``gen_ai.evaluation.name``), e.g. ``"exact_match"``.
        value: the numeric score (``gen_ai.evaluation.score.value``); None when only labelled.
        label: a categorical outcome (``gen_ai.evaluation.score.label``).
        explanation: a short free-text reason (``gen_ai.evaluation.explanation``).
        logger_provider: where log-encoded scores go; defaults to the global one.

    Raises:
        ConfigError: the target is not a span, span context, known response id or result.
    """
    if not name:
        raise ConfigError("score() needs a metric name; pass e.g. name='exact_match'.")
    span, ctx, copied, response_id = _resolve(target)
    attributes: dict[str, Any] = {semconv.GEN_AI_EVALUATION_NAME: name}
    if value is not None:
        attributes[semconv.GEN_AI_EVALUATION_SCORE_VALUE] = float(value)
    if label is not None:
        attributes[semconv.GEN_AI_EVALUATION_SCORE_LABEL] = str(label)
    if explanation is not None:
        attributes[semconv.GEN_AI_EVALUATION_EXPLANATION] = str(explanation)
    if response_id is not None:
        attributes[semconv.GEN_AI_RESPONSE_ID] = response_id
    attributes.update(copied)

    if span is not None and span.is_recording():
        span.add_event(semconv.EVENT_EVALUATION_RESULT, attributes=attributes)
        return
    from trace_ptune.telemetry import get_event_logger

    context = trace.set_span_in_context(NonRecordingSpan(ctx))
    get_event_logger(logger_provider).emit(
        event_name=semconv.EVENT_EVALUATION_RESULT,
        attributes=attributes,
        context=context,
    )


def _resolve(target: Any) -> tuple[Span | None, SpanContext, dict[str, Any], str | None]:
    """(live span or None, span context, copied attributes, response id) of a score target."""
    if isinstance(target, Span):
        ctx = target.get_span_context()
        known = _registry.for_span(ctx)
        copied = dict(known.attributes) if known else _copy_from_span(target)
        return target, ctx, copied, known.response_id if known else _response_id_of(target)
    if isinstance(target, SpanContext):
        known = _registry.for_span(target)
        if known is None:
            return None, target, {}, None
        return known.span, target, dict(known.attributes), known.response_id
    response_id = target if isinstance(target, str) else getattr(target, "response_id", None)
    if isinstance(response_id, str):
        known = _registry.get(response_id)
        if known is not None:
            return known.span, known.span_context, dict(known.attributes), response_id
        ctx = _context_from_result(target)
        if ctx is not None:
            return None, ctx, _copy_from_result(target), response_id
        raise ConfigError(
            f"No generation with response id {response_id!r} is known to this process; "
            "score the span or its SpanContext instead."
        )
    raise ConfigError(
        f"score() cannot score a {type(target).__name__}; pass a span, a SpanContext, a response id "
        "or a generation result."
    )


def _copy_from_span(span: Span) -> dict[str, Any]:
    attributes = getattr(span, "attributes", None) or {}
    return {k: attributes[k] for k in COPIED_ATTRIBUTES if k in attributes}


def _response_id_of(span: Span) -> str | None:
    attributes = getattr(span, "attributes", None) or {}
    rid = attributes.get(semconv.GEN_AI_RESPONSE_ID)
    return rid if isinstance(rid, str) else None


def _context_from_result(result: Any) -> SpanContext | None:
    """A SpanContext from a result's ``trace_id`` / ``span_id`` (hex strings or ints), if present."""
    trace_id = getattr(result, "trace_id", None)
    span_id = getattr(result, "span_id", None)
    try:
        tid = int(trace_id, 16) if isinstance(trace_id, str) else trace_id
        sid = int(span_id, 16) if isinstance(span_id, str) else span_id
    except ValueError:
        return None
    if not isinstance(tid, int) or not isinstance(sid, int) or not tid or not sid:
        return None
    return SpanContext(trace_id=tid, span_id=sid, is_remote=False, trace_flags=trace.TraceFlags(1))


def _copy_from_result(result: Any) -> dict[str, Any]:
    copied: dict[str, Any] = {}
    for attr, key in (
        ("adapter_hash", semconv.PTUNE_ADAPTER_HASH),
        ("tenant", semconv.PTUNE_TENANT),
        ("deployment", semconv.PTUNE_DEPLOYMENT),
        ("base_fingerprint", semconv.PTUNE_BASE_MODEL_FINGERPRINT),
    ):
        value = getattr(result, attr, None)
        if isinstance(value, str) and value:
            copied[key] = value
    return copied
