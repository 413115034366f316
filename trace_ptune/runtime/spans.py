"""Spans of the runtime: one ``ptune.generate`` call span, one generation span per row.

Each row gets a ``text_completion {base}`` or ``chat {base}`` span (the span contract in
ARCHITECTURE.md) that starts at the row's admission and ends when it finishes. It is created
when the row finishes, with its admission time as start time and every attribute at once, so no
span object lives through the decode loop. Scores from the request's scorers and the engine's
``on_result`` hook are recorded on it as ``gen_ai.evaluation.result`` events while it is open.

Prompt and completion text go on the span only when content capture is on
(``OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT=true`` or ``capture_content=True``).
Telemetry never breaks generation: any failure here is logged once and ignored.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import (
    NoOpTracer,
    NoOpTracerProvider,
    ProxyTracer,
    ProxyTracerProvider,
    Span,
    SpanKind,
    Status,
    StatusCode,
)

from trace_ptune import semconv
from trace_ptune.instrumentation._warn import warn_once
from trace_ptune.runtime.requests import GenerationRequest, GenerationResult, Score
from trace_ptune.telemetry import get_tracer

logger = logging.getLogger(__name__)


def _warn_once(what: str, exc: BaseException) -> None:
    warn_once(
        logger, f"runtime: {what}", "trace-ptune telemetry: %s failed (%s); generation continues.", what, exc
    )


def capture_content_enabled(option: bool | None) -> bool:
    if option is not None:
        return option
    return os.environ.get(semconv.ENV_CAPTURE_MESSAGE_CONTENT, "").strip().lower() == "true"


def response_model(base_name: str, adapter_hash12: str | None) -> str:
    """``gen_ai.response.model``: ``<base>+ptune:<hash12>``, or the base name alone."""
    return f"{base_name}+ptune:{adapter_hash12}" if adapter_hash12 else base_name


class RuntimeTelemetry:
    """Starts and finishes the runtime's spans; every method is failure-proof."""

    def __init__(
        self, base: Any, *, tracer_provider: Any | None = None, capture_content: bool | None = None
    ) -> None:
        self.base = base
        self.tracer = get_tracer(tracer_provider)
        self.capture_content = capture_content_enabled(capture_content)
        self._static: dict[Any, dict[str, Any]] = {}

    # ------------------------------------------------------------------ call span
    def start_call(self, batch_size: int) -> tuple[Span | None, Any]:
        """Open the ``ptune.generate`` span; returns it and the context for its rows."""
        try:
            span = self.tracer.start_span(
                semconv.SPAN_GENERATE_CALL,
                kind=SpanKind.INTERNAL,
                attributes={
                    semconv.PTUNE_BATCH_SIZE: batch_size,
                    semconv.PTUNE_BASE_MODEL_NAME: self.base.name,
                    semconv.PTUNE_BASE_MODEL_FINGERPRINT: self.base.fingerprint,
                },
            )
            return span, trace.set_span_in_context(span)
        except Exception as exc:
            _warn_once("starting the call span", exc)
            return None, None

    def end_call(self, span: Span | None, error: BaseException | None = None) -> None:
        if span is None:
            return
        try:
            if error is not None:
                span.record_exception(error)
                span.set_status(Status(StatusCode.ERROR, str(error)))
            span.end()
        except Exception as exc:
            _warn_once("ending the call span", exc)

    # ------------------------------------------------------------------ row spans
    def recording(self) -> bool:
        """False when spans are certainly dropped (a no-op tracer, or no SDK provider installed):
        then no attribute is built. Any other tracer is asked per span (``is_recording()``)."""
        tracer = self.tracer
        if isinstance(tracer, NoOpTracer):
            return False
        if isinstance(tracer, ProxyTracer):
            return not isinstance(trace.get_tracer_provider(), ProxyTracerProvider | NoOpTracerProvider)
        return True

    def finish_row(
        self,
        request: GenerationRequest,
        result: GenerationResult,
        *,
        parent: Any | None,
        start_time_ns: int | None,
        adapter: Any | None,
        deployment: str | None,
        batch_size: int,
        hooks: Iterable[Any],
    ) -> None:
        """Record the row's span in one go, from its admission time (``start_time_ns``) to now:
        every attribute at creation, then the scorers while it is open, then its end.

        No span object lives through the decode loop, and the attributes that are the same for
        every row of one adapter are built once and copied.
        """
        span: Span | None = None
        try:
            attributes = (
                self._row_attributes(request, result, adapter, deployment, batch_size)
                if self.recording()
                else None
            )
            span = self.tracer.start_span(
                semconv.generation_span_name(request.operation, self.base.name),
                context=parent,
                kind=SpanKind.CLIENT,
                attributes=attributes,
                start_time=start_time_ns,
            )
            if attributes is None and span.is_recording():
                span.set_attributes(self._row_attributes(request, result, adapter, deployment, batch_size))
            if result.error is not None:
                span.set_status(Status(StatusCode.ERROR, result.error))
            context = span.get_span_context()
            result.trace_id = format(context.trace_id, "032x")
            result.span_id = format(context.span_id, "016x")
        except Exception as exc:
            _warn_once("recording a generation span", exc)
        if result.error is None:
            for hook in hooks:
                self._score(span, request, result, hook, deployment)
        if span is not None:
            try:
                span.end()
            except Exception as exc:
                _warn_once("ending a generation span", exc)

    def _row_attributes(
        self,
        request: GenerationRequest,
        result: GenerationResult,
        adapter: Any | None,
        deployment: str | None,
        batch_size: int,
    ) -> dict[str, Any]:
        attributes = {k: v for k, v in request.attributes.items() if _attribute_value(v)}
        attributes.update(self._static_attributes(request.operation, adapter, result))
        attributes[semconv.PTUNE_TRAFFIC] = request.traffic or semconv.TRAFFIC_PRODUCTION
        for key, value in (
            (semconv.GEN_AI_REQUEST_MAX_TOKENS, request.max_new_tokens),
            (semconv.GEN_AI_REQUEST_TEMPERATURE, request.temperature),
            (semconv.GEN_AI_REQUEST_TOP_P, request.top_p),
            (semconv.GEN_AI_REQUEST_TOP_K, request.top_k),
            (semconv.GEN_AI_REQUEST_SEED, request.seed),
            (semconv.PTUNE_TENANT, request.tenant),
        ):
            if _attribute_value(value):
                attributes[key] = value
        if request.stop and all(isinstance(s, str) for s in request.stop):
            attributes[semconv.GEN_AI_REQUEST_STOP_SEQUENCES] = list(request.stop)
        attributes[semconv.GEN_AI_USAGE_INPUT_TOKENS] = result.input_tokens
        attributes[semconv.GEN_AI_USAGE_OUTPUT_TOKENS] = result.output_tokens
        attributes[semconv.GEN_AI_RESPONSE_FINISH_REASONS] = [result.finish_reason]
        attributes[semconv.PTUNE_USAGE_VIRTUAL_TOKENS] = result.virtual_tokens
        attributes[semconv.PTUNE_BATCH_SIZE] = batch_size
        if result.response_id:
            attributes[semconv.GEN_AI_RESPONSE_ID] = result.response_id
        if result.time_to_first_token is not None:
            attributes[semconv.GEN_AI_RESPONSE_TIME_TO_FIRST_CHUNK] = result.time_to_first_token
        if deployment:
            attributes[semconv.PTUNE_DEPLOYMENT] = deployment
        if self.capture_content:
            attributes[semconv.GEN_AI_INPUT_MESSAGES] = _input_messages(request)
            if result.error is None:
                attributes[semconv.GEN_AI_OUTPUT_MESSAGES] = json.dumps(
                    [
                        {
                            "role": "assistant",
                            "parts": [{"type": "text", "content": result.text}],
                            "finish_reason": result.finish_reason,
                        }
                    ]
                )
        if result.error is not None:
            attributes[semconv.ERROR_TYPE] = result.error_type or "GenerationError"
        return attributes

    def _static_attributes(
        self, operation: str, adapter: Any | None, result: GenerationResult
    ) -> dict[str, Any]:
        """The attributes every row of one (operation, adapter) shares, built once."""
        key = (
            operation,
            None if adapter is None else (result.adapter_hash, result.adapter_name, result.adapter_version),
            result.model,
        )
        attributes = self._static.get(key)
        if attributes is None:
            attributes = {
                semconv.GEN_AI_OPERATION_NAME: operation,
                semconv.GEN_AI_PROVIDER_NAME: semconv.GEN_AI_PROVIDER_TRANSFORMERS,
                semconv.GEN_AI_REQUEST_MODEL: self.base.name,
                semconv.GEN_AI_RESPONSE_MODEL: result.model or self.base.name,
                semconv.PTUNE_BASE_MODEL_NAME: self.base.name,
                semconv.PTUNE_BASE_MODEL_FINGERPRINT: self.base.fingerprint,
            }
            if adapter is not None:
                attributes[semconv.PTUNE_ADAPTER_HASH] = result.adapter_hash
                attributes[semconv.PTUNE_ADAPTER_METHOD] = result.method
                attributes[semconv.PTUNE_ADAPTER_NUM_VIRTUAL_TOKENS] = result.virtual_tokens
                if result.adapter_name:
                    attributes[semconv.PTUNE_ADAPTER_NAME] = result.adapter_name
                if result.adapter_version is not None:
                    attributes[semconv.PTUNE_ADAPTER_VERSION] = result.adapter_version
            if len(self._static) >= 4096:  # bounded: many adapters over a long life
                self._static.clear()
            self._static[key] = attributes
        return attributes

    def _score(
        self,
        span: Span | None,
        request: GenerationRequest,
        result: GenerationResult,
        hook: Any,
        deployment: str | None,
    ) -> None:
        try:
            produced = hook(request, result)
        except Exception as exc:
            _warn_once(f"scorer {getattr(hook, '__name__', hook)!r}", exc)
            return
        if produced is None:
            return
        scores = [produced] if isinstance(produced, Score) else list(produced)
        for score in scores:
            result.scores.append(score)
            if span is None:
                continue
            try:
                span.add_event(
                    semconv.EVENT_EVALUATION_RESULT,
                    evaluation_attributes(score, result, request, deployment, self.base),
                )
            except Exception as exc:
                _warn_once("recording a score", exc)


def evaluation_attributes(
    score: Score, result: GenerationResult, request: GenerationRequest, deployment: str | None, base: Any
) -> dict[str, Any]:
    """Attributes of one ``gen_ai.evaluation.result`` event, denormalised for the collector."""
    attributes: dict[str, Any] = {semconv.GEN_AI_EVALUATION_NAME: score.name}
    for key, value in (
        (semconv.GEN_AI_EVALUATION_SCORE_VALUE, score.value),
        (semconv.GEN_AI_EVALUATION_SCORE_LABEL, score.label),
        (semconv.GEN_AI_EVALUATION_EXPLANATION, score.explanation),
        (semconv.GEN_AI_RESPONSE_ID, result.response_id),
        (semconv.PTUNE_ADAPTER_HASH, result.adapter_hash),
        (semconv.PTUNE_TENANT, request.tenant),
        (semconv.PTUNE_DEPLOYMENT, deployment),
        (semconv.PTUNE_BASE_MODEL_FINGERPRINT, base.fingerprint),
    ):
        if value is not None:
            attributes[key] = float(value) if key == semconv.GEN_AI_EVALUATION_SCORE_VALUE else value
    return attributes


def _attribute_value(value: Any) -> bool:
    return value is not None and isinstance(value, str | int | float | bool)


def _input_messages(request: GenerationRequest) -> str:
    if isinstance(request.prompt, str) or request.is_token_ids:
        content = request.prompt if isinstance(request.prompt, str) else json.dumps(request.prompt)
        messages = [{"role": "user", "parts": [{"type": "text", "content": content}]}]
    else:
        messages = [
            {"role": m.get("role"), "parts": [{"type": "text", "content": m.get("content")}]}
            for m in request.prompt
            if isinstance(m, dict)
        ]
    return json.dumps(messages)
