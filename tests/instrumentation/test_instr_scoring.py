"""score(): a span event while the span is open, a log event in its context after it ended."""

from __future__ import annotations

from typing import Any

import pytest

import trace_ptune
from trace_ptune import semconv
from trace_ptune.errors import ConfigError
from trace_ptune.instrumentation import scoring
from trace_ptune.telemetry import get_tracer

from .conftest import make_peft


@pytest.fixture
def logs() -> Any:
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor

    exporter = InMemoryLogRecordExporter()
    provider = LoggerProvider(shutdown_on_exit=False)
    provider.add_log_record_processor(SimpleLogRecordProcessor(exporter))
    return provider, exporter


def test_score_on_an_open_span_is_a_span_event_with_the_scored_attributes_copied(spans):
    with get_tracer().start_as_current_span("text_completion m") as span:
        span.set_attribute(semconv.PTUNE_ADAPTER_HASH, "sha256:" + "a" * 64)
        span.set_attribute(semconv.PTUNE_TENANT, "acme")
        trace_ptune.score(span, "exact_match", 1, label="pass", explanation="same text")
    [finished] = spans.get_finished_spans()
    [event] = finished.events
    assert event.name == semconv.EVENT_EVALUATION_RESULT
    assert dict(event.attributes) == {
        semconv.GEN_AI_EVALUATION_NAME: "exact_match",
        semconv.GEN_AI_EVALUATION_SCORE_VALUE: 1.0,
        semconv.GEN_AI_EVALUATION_SCORE_LABEL: "pass",
        semconv.GEN_AI_EVALUATION_EXPLANATION: "same text",
        semconv.PTUNE_ADAPTER_HASH: "sha256:" + "a" * 64,
        semconv.PTUNE_TENANT: "acme",
    }


def test_late_score_by_response_id_is_a_log_event_in_the_generation_context(base, instrumented, logs):
    provider, exporter = logs
    model = make_peft(base, "prompt")
    with trace_ptune.tags(tenant="acme", deployment="acme/support@prod"):
        model.generate(**base.tokenizer(["hi"], return_tensors="pt"), max_new_tokens=2)
    [rid] = trace_ptune.instrumentation.last_response_ids()
    [span] = instrumented.get_finished_spans()

    trace_ptune.score(rid, "helpfulness", 0.25, logger_provider=provider)

    [record] = exporter.get_finished_logs()
    log = record.log_record
    assert log.event_name == semconv.EVENT_EVALUATION_RESULT
    assert (log.trace_id, log.span_id) == (span.context.trace_id, span.context.span_id)
    a = log.attributes
    assert a[semconv.GEN_AI_EVALUATION_NAME] == "helpfulness"
    assert a[semconv.GEN_AI_EVALUATION_SCORE_VALUE] == 0.25
    assert a[semconv.GEN_AI_RESPONSE_ID] == rid
    assert a[semconv.PTUNE_ADAPTER_HASH] == span.attributes[semconv.PTUNE_ADAPTER_HASH]
    assert a[semconv.PTUNE_TENANT] == "acme"
    assert a[semconv.PTUNE_DEPLOYMENT] == "acme/support@prod"
    assert a[semconv.PTUNE_BASE_MODEL_FINGERPRINT] == base.fingerprint
    assert instrumented.get_finished_spans()[0].events == ()  # not also a span event


def test_ended_span_and_span_context_and_result_object_targets_log(spans, logs):
    provider, exporter = logs
    with get_tracer().start_as_current_span("gen") as span:
        pass
    ctx = span.get_span_context()
    scoring.register_generation("resp-1", ctx, {semconv.PTUNE_DEPLOYMENT: "d", "other": 1})

    class Result:
        response_id = "resp-1"

    trace_ptune.score(span, "a", 1.0, logger_provider=provider)
    trace_ptune.score(ctx, "b", 2.0, logger_provider=provider)
    trace_ptune.score(Result(), "c", 3.0, logger_provider=provider)
    records = [r.log_record for r in exporter.get_finished_logs()]
    assert [r.attributes[semconv.GEN_AI_EVALUATION_NAME] for r in records] == ["a", "b", "c"]
    assert all(r.span_id == ctx.span_id and r.attributes[semconv.PTUNE_DEPLOYMENT] == "d" for r in records)
    assert all("other" not in r.attributes for r in records)


def test_runtime_registered_generation_scored_while_open_becomes_a_span_event(spans, logs):
    provider, exporter = logs
    with get_tracer().start_as_current_span("gen") as span:
        scoring.register_generation("r-open", span.get_span_context(), {}, span=span)
        trace_ptune.score("r-open", "x", 0.5, logger_provider=provider)
    assert [e.name for e in spans.get_finished_spans()[0].events] == [semconv.EVENT_EVALUATION_RESULT]
    assert exporter.get_finished_logs() == ()


def test_unknown_targets_are_refused_with_a_clear_error():
    with pytest.raises(ConfigError, match="no-such-id"):
        trace_ptune.score("no-such-id", "x", 1.0)
    with pytest.raises(ConfigError, match="cannot score a int"):
        trace_ptune.score(42, "x", 1.0)


def test_the_response_map_is_bounded():
    from opentelemetry.trace import SpanContext

    registry = scoring._Registry(capacity=3)
    for i in range(1, 6):
        ctx = SpanContext(trace_id=1, span_id=i, is_remote=False)
        registry.add(scoring.Generation(response_id=f"r{i}", span_context=ctx, attributes={}))
    assert len(registry) == 3
    assert registry.get("r1") is None and registry.get("r5") is not None


def test_generations_added_later_are_found_in_order_and_bounded():
    from opentelemetry.trace import SpanContext

    registry = scoring._Registry(capacity=3)

    def gen(i: int) -> scoring.Generation:
        return scoring.Generation(
            response_id=f"r{i}",
            span_context=SpanContext(trace_id=1, span_id=i, is_remote=False),
            attributes={},
        )

    registry.add(gen(1))
    for i in range(2, 7):  # more than the capacity before any lookup
        registry.add_later(gen(i))
    assert len(registry._incoming) == 3
    assert len(registry) == 3
    assert [registry.get(f"r{i}") is not None for i in range(1, 7)] == [False] * 3 + [True] * 3
    registry.add_later(gen(7))
    found = registry.for_span(SpanContext(trace_id=1, span_id=7, is_remote=False))
    assert found is not None and found.response_id == "r7"
    assert registry.get("r4") is None
