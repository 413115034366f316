"""Trace ``generate()`` of every transformers model: one span per generated sequence.

Usage::

    from trace_ptune.instrumentation.transformers import TransformersInstrumentor

    TransformersInstrumentor().instrument(tracer_provider=..., meter_provider=..., capture_content=False)
    model.generate(**inputs)          # traced
    TransformersInstrumentor().uninstrument()

or ``trace_ptune.instrument()`` for every instrumentor at once, or no code at all with
``opentelemetry-instrument python app.py`` (entry point ``trace_ptune_transformers``).

It wraps ``transformers.generation.utils.GenerationMixin.generate``, so every causal LM and the
pipelines built on them are covered. Per call:

- a single-sequence call gives one span ``text_completion {base}``; a call that produces several
  sequences (a batch, or ``num_return_sequences``) gives a ``ptune.generate`` call span with one
  ``text_completion {base}`` child per sequence;
- the operation is ``chat`` (spans ``chat {base}``) inside a ``TextGenerationPipeline`` call with
  chat input (messages, a list of conversations, or ``Chat`` objects; the pipeline's ``__call__``
  is wrapped once its module is imported) and inside ``trace_ptune.tags(operation="chat")``;
  ``generate()`` itself sees token ids and cannot tell a chat template from plain text;
- attributes from the tensors: input tokens per row (padding excluded), output tokens per row (up
  to and including the first end-of-sequence token), finish reason (``stop`` or ``length``),
  request parameters from the keyword arguments and generation config, time to first token when
  a ``streamer`` is passed, the base-model name (``trace_ptune.instrumentation.register_base_model``,
  else ``config._name_or_path``) and, when registered, its fingerprint;
- with the PEFT instrumentor on, the active soft prompt's ``ptune.adapter.*`` attributes, virtual
  token count and ``gen_ai.response.model = <base>+ptune:<hash12>``;
- tenant / deployment / traffic from ``trace_ptune.tags()``, baggage or ``instrument()`` defaults;
- metrics ``gen_ai.client.token.usage``, ``gen_ai.client.operation.duration`` and
  ``gen_ai.client.operation.time_to_first_chunk`` with ``ptune.adapter.hash`` as a dimension.

Prompt and completion text (``gen_ai.input.messages`` / ``gen_ai.output.messages``) are recorded
only with ``capture_content=True`` or ``OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT=true``,
and only when a tokenizer is known (registered, or passed to ``generate(tokenizer=...)``).

Spans are created when ``generate()`` returns, with the call's start time, so each gets all its
attributes at once and nothing is attached to the context while the model runs (spans created
inside ``generate()`` by other code are siblings, not children). Each sequence gets a fresh
``gen_ai.response.id``; ``trace_ptune.instrumentation.last_response_ids()`` returns the ids of the
last call in the current context, for ``trace_ptune.score()``.

The wrapper honours ``suppress_instrumentation``; an exception from ``generate()`` is recorded
and re-raised unchanged; a failure inside the instrumentation is logged once and the call proceeds.
Nothing is discovered per call: model details are cached per model object.
"""

from __future__ import annotations

import json
import logging
import os
import random
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Collection, Iterable
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import wrapt
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.instrumentation.instrumentor import BaseInstrumentor
from opentelemetry.instrumentation.utils import is_instrumentation_enabled, unwrap
from opentelemetry.trace import Status, StatusCode

from trace_ptune import semconv
from trace_ptune.instrumentation import context as _ctx
from trace_ptune.instrumentation import scoring as _scoring
from trace_ptune.instrumentation._warn import warn_once

_log = logging.getLogger(__name__)

_INSTRUMENTS = ("transformers >= 4.40",)
_MODULE = "transformers.generation.utils"
_TARGET = "GenerationMixin.generate"
_PIPELINE_MODULE = "transformers.pipelines.text_generation"
_PIPELINE_CLASS = "TextGenerationPipeline"

# Bucket boundaries the GenAI semantic conventions recommend.
_TOKEN_BUCKETS = [1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864]
_DURATION_BUCKETS = [0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92]
_TTFC_BUCKETS = [0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0]

_SMALL = 4096  # tensors up to this many elements are converted to lists in one call
_V = TypeVar("_V")
_MAX_CACHED = 256  # per-model attribute dicts kept per adapter state (training makes new ones)
_MAX_PENDING = 65536  # pending metric records above which each call records as many as it adds
_DRAIN_INSTRUMENT = "trace_ptune.instrumentation.pending"  # observes nothing; see _drain_pending
_active = False  # set by TransformersInstrumentor; read per call by the PEFT instrumentor

# Response ids: a private generator seeded from the OS, reseeded in every forked child. Not the
# `random` module's shared one (users seed it, forked ranks would share it), and not
# os.urandom per call (a system call: measured 8-17 µs per call here against 0.1 µs).
_ids = random.Random(os.urandom(32))
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=lambda: _ids.seed(os.urandom(32)))
_in_generate: ContextVar[bool] = ContextVar("trace_ptune_in_generate", default=False)


def capture_content_enabled(explicit: bool | None) -> bool:
    """``explicit`` if given, else the standard opt-in environment variable."""
    if explicit is not None:
        return bool(explicit)
    return os.environ.get(semconv.ENV_CAPTURE_MESSAGE_CONTENT, "").strip().lower() in ("true", "1", "yes")


class TransformersInstrumentor(BaseInstrumentor):
    """Instrument ``GenerationMixin.generate`` (see the module docstring)."""

    _wrapper: _GenerateWrapper | None = None

    def instrumentation_dependencies(self) -> Collection[str]:
        return _INSTRUMENTS

    def _instrument(self, **kwargs: Any) -> None:
        from trace_ptune.telemetry import get_meter, get_tracer

        global _active
        self._wrapper = _GenerateWrapper(
            tracer=get_tracer(kwargs.get("tracer_provider")),
            meter=get_meter(kwargs.get("meter_provider")),
            capture_content=capture_content_enabled(kwargs.get("capture_content")),
        )
        wrapt.wrap_function_wrapper(_MODULE, _TARGET, self._wrapper)
        _active = True
        _instrument_pipeline()

    def _uninstrument(self, **kwargs: Any) -> None:
        global _active
        from transformers.generation.utils import GenerationMixin

        unwrap(GenerationMixin, "generate")
        _uninstrument_pipeline()
        _active = False
        self._wrapper = None
        _drain_pending()


def is_active() -> bool:
    """True while the transformers instrumentor is on."""
    return _active


# ---------------------------------------------------------------- chat detection in pipelines

# TextGenerationPipeline.__call__ is wrapped when its module is imported (at once if it already
# is): importing transformers.pipelines costs ~0.7 s, too much for instrument() to pay for users
# who never build a pipeline. The post-import hook cannot be removed, so it is registered once and
# wraps only while the instrumentor is on.
_pipeline_on = False  # the instrumentor wants the pipeline wrapped
_pipeline_wrapped = False  # TextGenerationPipeline.__call__ is wrapped now
_pipeline_hook = False  # the post-import hook is registered


def _instrument_pipeline() -> None:
    global _pipeline_on, _pipeline_hook
    _pipeline_on = True
    module = sys.modules.get(_PIPELINE_MODULE)
    if module is not None:
        _wrap_pipeline(module)
    elif not _pipeline_hook:
        wrapt.register_post_import_hook(_wrap_pipeline, _PIPELINE_MODULE)
        _pipeline_hook = True


def _uninstrument_pipeline() -> None:
    global _pipeline_on, _pipeline_wrapped
    _pipeline_on = False
    module = sys.modules.get(_PIPELINE_MODULE)
    if _pipeline_wrapped and module is not None:
        unwrap(getattr(module, _PIPELINE_CLASS), "__call__")
    _pipeline_wrapped = False


def _wrap_pipeline(module: Any) -> None:
    global _pipeline_wrapped
    if not _pipeline_on or _pipeline_wrapped:
        return
    try:
        wrapt.wrap_function_wrapper(
            module, f"{_PIPELINE_CLASS}.__call__", _PipelineWrapper(getattr(module, "Chat", None))
        )
        _pipeline_wrapped = True
    except Exception as exc:
        warn_once(_log, "pipeline-wrap", "trace-ptune could not wrap TextGenerationPipeline: %r", exc)


class _PipelineWrapper:
    """Marks the generate() calls of a pipeline call with chat input as ``chat`` operations."""

    def __init__(self, chat_type: type | None) -> None:
        self.chat_type = chat_type

    def __call__(self, wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if _ctx.current_operation.get() is not None:  # tags(operation=...) decides
            return wrapped(*args, **kwargs)
        try:
            chat = self.is_chat(args[0] if args else kwargs.get("text_inputs"))
        except Exception:
            chat = False
        if not chat:
            return wrapped(*args, **kwargs)
        token = _ctx.current_operation.set(semconv.GEN_AI_OPERATION_CHAT)
        try:
            return wrapped(*args, **kwargs)
        finally:
            _ctx.current_operation.reset(token)

    def is_chat(self, inputs: Any) -> bool:
        """The pipeline's own rule: messages, conversations (lists of messages) or ``Chat`` objects."""
        chat_type = self.chat_type
        if chat_type is not None and isinstance(inputs, chat_type):
            return True
        if not isinstance(inputs, (list, tuple)) or not inputs:
            return False
        first = inputs[0]
        if _is_message(first) or (chat_type is not None and isinstance(first, chat_type)):
            return True
        return isinstance(first, (list, tuple)) and all(
            isinstance(chat, (list, tuple)) and chat and _is_message(chat[0]) for chat in inputs
        )


def _is_message(value: Any) -> bool:
    return isinstance(value, dict) and "role" in value and "content" in value


# ---------------------------------------------------------------- deferred metric records

# Histogram records cost ~7 µs each in the OpenTelemetry SDK (attribute cleaning, copying and
# hashing on every record, no cache), three per call. The calling thread only appends
# histogram, value, attributes, context here (flat, four slots per record, one atomic
# ``extend``: no per-record container for the garbage collector to track; the attribute dicts
# are the prebuilt per-model ones); the records are made when a metric reader
# collects (the callback of an observable instrument that observes nothing, so it runs before
# the reader's storage is read) or when uninstrumenting. With more than _MAX_PENDING waiting (a
# provider nobody collects from), each call records as many as it adds: bounded memory, no
# latency spike, the same cost as recording inline. Values, attribute sets and the caller's
# context (for exemplars) are the same as recording inline. A no-op meter queues nothing.
_pending: deque[Any] = deque()
_drain_lock = threading.Lock()  # appends need none (one extend each); drains pop four at a time


def _drain_pending(options: Any = None, limit: int = -1, wait: bool = True) -> Iterable[Any]:
    """Record up to ``limit`` (all: -1) queued measurements; an observable callback (observes nothing).

    ``wait=False`` (a generate() call over the bound) skips when a collection is draining already.
    """
    if not _drain_lock.acquire(blocking=wait):
        return ()
    try:
        pop = _pending.popleft
        while limit and len(_pending) >= 4:
            limit -= 1
            histogram, value, attrs, ctx = pop(), pop(), pop(), pop()
            try:
                histogram.record(value, attrs, ctx)
            except Exception as exc:
                warn_once(_log, "metric-record", "trace-ptune could not record a metric: %r", exc)
    finally:
        _drain_lock.release()
    return ()


# ---------------------------------------------------------------- per-model cache


@dataclass
class _ModelInfo:
    identity: Any  # the registered BaseIdentity this was built from (or None)
    name: str
    span_name: str
    fingerprint: str | None
    is_encoder_decoder: bool
    tokenizer: Any
    static: dict[str, Any]  # attributes identical for every call on this model
    metric_attrs: dict[str, tuple[dict[str, Any], dict[str, Any], dict[str, Any]]] = field(
        default_factory=dict
    )
    request_attrs: dict[Any, dict[str, Any]] = field(default_factory=dict)
    kept_attrs: dict[Any, dict[str, Any]] = field(default_factory=dict)
    operation: str = semconv.GEN_AI_OPERATION_TEXT_COMPLETION
    variants: dict[str, _ModelInfo] = field(default_factory=dict)

    def for_operation(self, operation: str) -> _ModelInfo:
        """This model's details for another GenAI operation (cached; each has its own caches)."""
        if operation == self.operation:
            return self
        found = self.variants.get(operation)
        if found is None:
            found = self.variants[operation] = _ModelInfo(
                identity=self.identity,
                name=self.name,
                span_name=semconv.generation_span_name(operation, self.name),
                fingerprint=self.fingerprint,
                is_encoder_decoder=self.is_encoder_decoder,
                tokenizer=self.tokenizer,
                static={**self.static, semconv.GEN_AI_OPERATION_NAME: operation},
                operation=operation,
            )
        return found

    def kept_for(self, adapter: Any) -> dict[str, Any]:
        """The attributes scores copy, for calls without tags (cached; never mutate it)."""
        found = self.kept_attrs.get(adapter)
        if found is None:
            found = _remember(self.kept_attrs, adapter, _scoring.copied_attributes(self.request_for(adapter)))
        return found

    def request_for(self, adapter: Any) -> dict[str, Any]:
        """The per-call attributes that depend only on the model and the adapter (cached; copy it)."""
        found = self.request_attrs.get(adapter)
        if found is None:
            found = dict(self.static)
            if adapter is not None:
                found.update(adapter.attributes)
                found[semconv.PTUNE_USAGE_VIRTUAL_TOKENS] = adapter.num_virtual_tokens
                found[semconv.GEN_AI_RESPONSE_MODEL] = f"{self.name}+ptune:{adapter.hash12}"
            else:
                found[semconv.GEN_AI_RESPONSE_MODEL] = self.name
            _remember(self.request_attrs, adapter, found)
        return found

    def metrics_for(self, adapter_hash: str | None) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        """(call attributes, input-token attributes, output-token attributes), cached per adapter."""
        key = adapter_hash or ""
        found = self.metric_attrs.get(key)
        if found is None:
            base = {
                semconv.GEN_AI_OPERATION_NAME: self.operation,
                semconv.GEN_AI_PROVIDER_NAME: semconv.GEN_AI_PROVIDER_TRANSFORMERS,
                semconv.GEN_AI_REQUEST_MODEL: self.name,
            }
            if adapter_hash:
                base[semconv.PTUNE_ADAPTER_HASH] = adapter_hash
            found = (
                base,
                {**base, semconv.GEN_AI_TOKEN_TYPE: "input"},
                {**base, semconv.GEN_AI_TOKEN_TYPE: "output"},
            )
            _remember(self.metric_attrs, key, found)
        return found


def _remember(cache: dict[Any, _V], key: Any, value: _V) -> _V:
    """Store ``value`` under ``key`` in a per-model cache, emptying it first when it is full."""
    if len(cache) >= _MAX_CACHED:
        cache.clear()
    cache[key] = value
    return value


_models: weakref.WeakKeyDictionary[Any, _ModelInfo] = weakref.WeakKeyDictionary()


def _model_info(model: Any) -> _ModelInfo:
    identity = _ctx.base_identity(model)
    try:
        info = _models.get(model)
    except TypeError:
        info = None
    if info is not None and info.identity is identity:
        return info
    config = getattr(model, "config", None)
    name = (identity.name if identity else None) or _name_from_config(model, config)
    fingerprint = (identity.fingerprint if identity else None) or getattr(
        model, "_trace_ptune_fingerprint", None
    )
    static: dict[str, Any] = {
        semconv.GEN_AI_OPERATION_NAME: semconv.GEN_AI_OPERATION_TEXT_COMPLETION,
        semconv.GEN_AI_PROVIDER_NAME: semconv.GEN_AI_PROVIDER_TRANSFORMERS,
        semconv.GEN_AI_REQUEST_MODEL: name,
        semconv.PTUNE_BASE_MODEL_NAME: name,
    }
    if fingerprint:
        static[semconv.PTUNE_BASE_MODEL_FINGERPRINT] = fingerprint
    info = _ModelInfo(
        identity=identity,
        name=name,
        span_name=semconv.generation_span_name(semconv.GEN_AI_OPERATION_TEXT_COMPLETION, name),
        fingerprint=fingerprint,
        is_encoder_decoder=bool(getattr(config, "is_encoder_decoder", False)),
        tokenizer=identity.tokenizer if identity else None,
        static=static,
    )
    try:
        _models[model] = info
    except TypeError:
        pass
    return info


def _name_from_config(model: Any, config: Any) -> str:
    raw = getattr(model, "name_or_path", None) or getattr(config, "_name_or_path", None) or ""
    raw = str(raw)
    if raw and (os.path.isabs(raw) or raw.startswith(".") or os.path.isdir(raw)):
        raw = Path(raw.rstrip("/\\")).name  # a local directory: its name, never the full path
    return raw or getattr(config, "model_type", None) or type(model).__name__


# ---------------------------------------------------------------- the wrapper


class _TimedStreamer(wrapt.ObjectProxy):  # type: ignore[misc]
    """Passes everything through to the user's streamer; notes when the first new token arrives."""

    def __init__(self, wrapped: Any) -> None:
        super().__init__(wrapped)
        self._self_puts = 0
        self._self_first_ns: int | None = None

    def put(self, value: Any) -> Any:
        self._self_puts += 1
        # generate() first puts the prompt, then each new token.
        if self._self_puts == 2:
            self._self_first_ns = time.time_ns()
        return self.__wrapped__.put(value)


class _GenerateWrapper:
    def __init__(self, tracer: Any, meter: Any, capture_content: bool) -> None:
        from opentelemetry.metrics import NoOpMeter

        self.tracer = tracer
        self.capture_content = capture_content
        self.metrics_on = not isinstance(meter, NoOpMeter)
        self.token_usage = meter.create_histogram(
            semconv.METRIC_TOKEN_USAGE,
            unit="{token}",
            description="Number of input and output tokens used per generated sequence.",
            explicit_bucket_boundaries_advisory=_TOKEN_BUCKETS,
        )
        self.duration = meter.create_histogram(
            semconv.METRIC_OPERATION_DURATION,
            unit="s",
            description="Duration of generate() calls.",
            explicit_bucket_boundaries_advisory=_DURATION_BUCKETS,
        )
        self.ttfc = meter.create_histogram(
            semconv.METRIC_TIME_TO_FIRST_CHUNK,
            unit="s",
            description="Time from the start of generate() to the first generated token (streaming calls).",
            explicit_bucket_boundaries_advisory=_TTFC_BUCKETS,
        )
        if self.metrics_on:
            meter.create_observable_gauge(
                _DRAIN_INSTRUMENT,
                callbacks=[_drain_pending],
                description="Records the generate() metrics queued since the last collection; observes nothing.",
            )

    def __call__(self, wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if _in_generate.get() or not is_instrumentation_enabled():
            return wrapped(*args, **kwargs)
        try:
            call = _Call(self, instance, args, kwargs)
            kwargs = call.kwargs
            call.start()
        except Exception as exc:
            warn_once(
                _log, "generate-start", "trace-ptune could not trace generate(): %r; not tracing it.", exc
            )
            return wrapped(*args, **kwargs)
        flag = _in_generate.set(True)
        try:
            result = wrapped(*args, **kwargs)
        except BaseException as exc:
            _in_generate.reset(flag)
            call.fail(exc)
            raise
        _in_generate.reset(flag)
        call.finish(result)
        return result


class _Call:
    """One instrumented generate() call: request attributes before, response attributes after."""

    __slots__ = (
        "adapter",
        "batch",
        "eos",
        "ids",
        "info",
        "instance",
        "kept",
        "kwargs",
        "max_tokens",
        "nrs",
        "output_start",
        "owner",
        "pad",
        "request",
        "rows",
        "start_ns",
        "streamer",
    )

    def __init__(
        self, owner: _GenerateWrapper, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None:
        self.owner = owner
        self.instance = instance
        self.kwargs = kwargs
        info = _model_info(instance)
        operation = _ctx.current_operation.get()
        if operation is not None:
            info = info.for_operation(operation)
        self.info = info
        self.adapter = _ctx.active_adapter.get()
        self.streamer: _TimedStreamer | None = None

        ids = args[0] if args else kwargs.get("inputs")
        embeds = kwargs.get("inputs_embeds")
        if ids is None:
            ids = kwargs.get("input_ids")  # token ids by name: never embeddings
        elif getattr(ids, "is_floating_point", None) is not None and ids.is_floating_point():
            ids, embeds = None, ids  # inputs_embeds passed positionally
        gen_config = args[1] if len(args) > 1 else kwargs.get("generation_config")
        model_config = getattr(instance, "generation_config", None)

        def param(key: str) -> Any:
            value = kwargs.get(key)
            if value is None and gen_config is not None:
                value = getattr(gen_config, key, None)
            if value is None and model_config is not None:
                value = getattr(model_config, key, None)
            return value

        shape = getattr(ids if ids is not None else embeds, "shape", None)
        self.ids = ids if ids is not None and len(shape or ()) == 2 else None
        self.batch = int(shape[0]) if shape else 1
        prompt_len = int(shape[1]) if shape is not None and len(shape) >= 2 else 0
        if info.is_encoder_decoder:
            self.output_start = 1  # the decoder start token
        else:
            self.output_start = prompt_len if self.ids is not None else 0
        self.nrs = int(param("num_return_sequences") or 1)
        self.rows = self.batch * self.nrs
        self.eos = _token_ids(param("eos_token_id"))
        pad = _token_ids(param("pad_token_id"))
        self.pad = next(iter(pad)) if len(pad) == 1 else None
        max_new = param("max_new_tokens")
        if max_new is None:
            max_length = param("max_length")
            max_new = max_length - prompt_len if max_length and not info.is_encoder_decoder else max_length
        self.max_tokens = int(max_new) if max_new is not None else None

        request = dict(info.request_for(self.adapter))
        if self.max_tokens is not None:
            request[semconv.GEN_AI_REQUEST_MAX_TOKENS] = self.max_tokens
        if param("do_sample"):
            for key, attr in (
                ("temperature", semconv.GEN_AI_REQUEST_TEMPERATURE),
                ("top_p", semconv.GEN_AI_REQUEST_TOP_P),
                ("top_k", semconv.GEN_AI_REQUEST_TOP_K),
            ):
                value = param(key)
                if value is not None:
                    request[attr] = value
        else:
            request[semconv.GEN_AI_REQUEST_TEMPERATURE] = 0.0  # greedy / beam search
        request[semconv.PTUNE_BATCH_SIZE] = self.rows
        tags = _ctx.current_tags()
        if tags:
            request.update(tags)
            self.kept = None
        else:  # what scores copy: the same for every call on this model and adapter
            self.kept = info.kept_for(self.adapter)
        self.request = request

        streamer = kwargs.get("streamer")
        if streamer is not None:
            self.streamer = _TimedStreamer(streamer)
            self.kwargs = {**kwargs, "streamer": self.streamer}

    # -- lifecycle

    def start(self) -> None:
        self.start_ns = time.time_ns()

    def fail(self, exc: BaseException) -> None:
        try:
            error_type = type(exc).__qualname__
            name = self.info.span_name if self.rows == 1 else semconv.SPAN_GENERATE_CALL
            attrs = {**self.request, semconv.ERROR_TYPE: error_type}
            span = self.owner.tracer.start_span(name, attributes=attrs, start_time=self.start_ns)
            span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, f"{error_type}: {exc}"))
            span.end()
            if not self.owner.metrics_on:
                return
            call_attrs, _, _ = self.info.metrics_for(self.adapter.hash if self.adapter else None)
            _pending.extend(
                (
                    self.owner.duration,
                    (time.time_ns() - self.start_ns) / 1e9,
                    {**call_attrs, semconv.ERROR_TYPE: error_type},
                    otel_context.get_current(),
                )
            )
            if len(_pending) > 4 * _MAX_PENDING:
                _drain_pending(limit=1, wait=False)
        except Exception as inner:
            warn_once(_log, "generate-fail", "trace-ptune could not record a generate() error: %r", inner)

    def finish(self, result: Any) -> None:
        try:
            self._record(result, time.time_ns())
        except Exception as exc:
            warn_once(_log, "generate-finish", "trace-ptune could not record a generate() result: %r", exc)

    def _record(self, result: Any, end_ns: int) -> None:
        # Spans are created once the call returned, with the call's start time: every attribute
        # is then set in one go, and nothing is attached to the context while the model runs.
        owner = self.owner
        tracer = owner.tracer
        rows = self._rows(result)
        ttfc = None
        if self.streamer is not None and self.streamer._self_first_ns is not None:
            ttfc = (self.streamer._self_first_ns - self.start_ns) / 1e9
        call_attrs, in_attrs, out_attrs = self.info.metrics_for(self.adapter.hash if self.adapter else None)
        texts = self._texts(result) if owner.capture_content else None
        kept = self.kept if self.kept is not None else _scoring.copied_attributes(self.request)
        name = self.info.span_name
        start_ns = self.start_ns

        if self.rows == 1:
            parent = None
        else:
            call_span = tracer.start_span(
                semconv.SPAN_GENERATE_CALL,
                attributes={k: v for k, v in self.request.items() if k != semconv.GEN_AI_RESPONSE_MODEL},
                start_time=start_ns,
            )
            if ttfc is not None:
                call_span.set_attribute(semconv.GEN_AI_RESPONSE_TIME_TO_FIRST_CHUNK, ttfc)
            parent = trace.set_span_in_context(call_span)
        response_ids = []
        for i in range(self.rows):
            rid = f"{_ids.getrandbits(64):016x}"
            attrs = self.request.copy()
            self._row_attrs(attrs, rows[i] if rows else None, ttfc, texts, i)
            attrs[semconv.GEN_AI_RESPONSE_ID] = rid
            span = tracer.start_span(name, context=parent, attributes=attrs, start_time=start_ns)
            span.end(end_time=end_ns)
            ctx = span.get_span_context()
            if ctx.is_valid:
                response_ids.append(rid)
                _scoring._remember(rid, ctx, kept)
        if parent is not None:
            call_span.end(end_time=end_ns)
        _scoring._set_last_response_ids(tuple(response_ids))

        if not owner.metrics_on:
            return
        ctx = otel_context.get_current()
        pending = _pending
        before = len(pending)
        pending.extend((owner.duration, (end_ns - start_ns) / 1e9, call_attrs, ctx))
        if ttfc is not None:
            pending.extend((owner.ttfc, ttfc, call_attrs, ctx))
        if rows:
            usage = owner.token_usage
            for input_tokens, output_tokens, _ in rows:
                pending.extend((usage, input_tokens, in_attrs, ctx, usage, output_tokens, out_attrs, ctx))
        if len(pending) > 4 * _MAX_PENDING:
            _drain_pending(limit=(len(pending) - before) // 4, wait=False)

    def _row_attrs(
        self,
        attrs: dict[str, Any],
        row: tuple[int, int, str] | None,
        ttfc: float | None,
        texts: list[Any] | None,
        i: int,
    ) -> None:
        """Add one output row's attributes to ``attrs``."""
        if row is not None:
            attrs[semconv.GEN_AI_USAGE_INPUT_TOKENS] = row[0]
            attrs[semconv.GEN_AI_USAGE_OUTPUT_TOKENS] = row[1]
            attrs[semconv.GEN_AI_RESPONSE_FINISH_REASONS] = (row[2],)
        if ttfc is not None:
            attrs[semconv.GEN_AI_RESPONSE_TIME_TO_FIRST_CHUNK] = ttfc
        if texts is not None:
            prompt, completion = texts[i]
            reason = row[2] if row is not None else None
            attrs[semconv.GEN_AI_INPUT_MESSAGES] = json.dumps(
                [{"role": "user", "parts": [{"type": "text", "content": prompt}]}]
            )
            attrs[semconv.GEN_AI_OUTPUT_MESSAGES] = json.dumps(
                [
                    {
                        "role": "assistant",
                        "parts": [{"type": "text", "content": completion}],
                        "finish_reason": reason,
                    }
                ]
            )

    def _rows(self, result: Any) -> list[tuple[int, int, str]] | None:
        """(input tokens, output tokens, finish reason) per output row, from the tensors."""
        sequences = _sequences(result)
        if sequences is None or not hasattr(sequences, "tolist") or sequences.dim() != 2:
            return None
        start = self.output_start
        if sequences.numel() <= _SMALL:  # one conversion beats a tensor slice for small outputs
            generated = [row[start:] for row in sequences.tolist()]
        else:
            generated = sequences[:, start:].tolist()
        inputs = self._input_counts()
        eos, pad, max_tokens, nrs = self.eos, self.pad, self.max_tokens, self.nrs
        single_eos = next(iter(eos)) if len(eos) == 1 else None
        out: list[tuple[int, int, str]] = []
        last = len(inputs) - 1
        for r, tokens in enumerate(generated):
            n = len(tokens)
            if single_eos is not None:
                try:
                    end = tokens.index(single_eos) + 1
                except ValueError:
                    end = 0
            elif eos:
                end = next((i + 1 for i, t in enumerate(tokens) if t in eos), 0)
            else:
                end = 0
            if end:
                n, reason = end, "stop"
            else:
                if pad is not None:
                    while n and tokens[n - 1] == pad:
                        n -= 1
                reason = "length" if max_tokens is not None and n >= max_tokens else "stop"
            out.append((inputs[min(r // nrs, last)], n, reason))
        return out

    def _input_counts(self) -> list[int]:
        mask = self.kwargs.get("attention_mask")
        if mask is not None and hasattr(mask, "dim") and mask.dim() == 2:
            if mask.numel() <= _SMALL:
                return [int(sum(row)) for row in mask.tolist()]
            return [int(v) for v in mask.sum(-1).tolist()]
        ids = self.ids
        if ids is not None:
            if self.pad is not None and self.batch > 1:
                return [int(v) for v in (ids != self.pad).sum(-1).tolist()]
            return [int(ids.shape[1])] * self.batch
        embeds = self.kwargs.get("inputs_embeds")
        length = int(embeds.shape[1]) if embeds is not None and len(embeds.shape) >= 2 else 0
        return [length] * self.batch

    def _texts(self, result: Any) -> list[tuple[str, str]] | None:
        tokenizer = self.kwargs.get("tokenizer") or self.info.tokenizer
        sequences = _sequences(result)
        if tokenizer is None or sequences is None:
            return None
        prompts = (
            tokenizer.batch_decode(self.ids, skip_special_tokens=True)
            if self.ids is not None
            else [""] * self.batch
        )
        completions = tokenizer.batch_decode(sequences[:, self.output_start :], skip_special_tokens=True)
        return [(prompts[i // self.nrs], completions[i]) for i in range(len(completions))]


def _token_ids(value: Any) -> frozenset[int]:
    """Token ids from an int, a list or a tensor (generation configs hold any of them)."""
    if value is None:
        return frozenset()
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, int):
        return frozenset((value,))
    return frozenset(int(v) for v in value)


def _sequences(result: Any) -> Any:
    if hasattr(result, "dim"):
        return result
    return getattr(result, "sequences", None)
