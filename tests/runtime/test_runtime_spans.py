"""Generation spans: one per row under one call span, with the contract's attributes."""

from __future__ import annotations

import json

from trace_ptune import semconv
from trace_ptune.runtime import Engine, GenerationRequest, Score

from .conftest import make_adapter


def _engine(base, **kwargs):
    engine = Engine(base, store=object(), **kwargs)
    sp = make_adapter(base, semconv.METHOD_PROMPT_TUNING, 4, seed=1, name="acme/bot")
    sp.version = 2
    engine.register(sp)
    return engine, sp


def test_one_generation_span_per_row_under_one_call_span(base64, spans, monkeypatch):
    monkeypatch.delenv(semconv.ENV_CAPTURE_MESSAGE_CONTENT, raising=False)
    engine, sp = _engine(base64)
    results = engine.generate(
        [
            GenerationRequest("hello world", adapter="acme/bot", tenant="acme", max_new_tokens=3,
                              request_id="r1"),
            GenerationRequest([{"role": "user", "content": "hi"}], max_new_tokens=2, temperature=0.7,
                              top_p=0.9, top_k=20, seed=5, traffic="eval", deployment="base@prod"),
            GenerationRequest("bad", adapter="nope"),
        ]
    )  # fmt: skip
    finished = spans.get_finished_spans()
    calls = [s for s in finished if s.name == semconv.SPAN_GENERATE_CALL]
    assert len(calls) == 1
    call = calls[0]
    assert call.attributes[semconv.PTUNE_BATCH_SIZE] == 3
    rows = [s for s in finished if s.name != semconv.SPAN_GENERATE_CALL]
    assert sorted(s.name for s in rows) == [
        "chat tiny-random", "text_completion tiny-random", "text_completion tiny-random",
    ]  # fmt: skip
    for s in rows:
        assert s.parent.span_id == call.context.span_id
        assert s.context.trace_id == call.context.trace_id

    by_id = {format(s.context.span_id, "016x"): s for s in rows}
    a = by_id[results[0].span_id].attributes
    assert a[semconv.GEN_AI_OPERATION_NAME] == "text_completion"
    assert a[semconv.GEN_AI_PROVIDER_NAME] == "transformers"
    assert a[semconv.GEN_AI_REQUEST_MODEL] == "tiny-random"
    assert a[semconv.GEN_AI_RESPONSE_MODEL] == f"tiny-random+ptune:{sp.hash12}"
    assert a[semconv.GEN_AI_RESPONSE_ID] == results[0].response_id
    assert a[semconv.GEN_AI_REQUEST_MAX_TOKENS] == 3
    assert a[semconv.GEN_AI_REQUEST_TEMPERATURE] == 0.0
    assert a[semconv.GEN_AI_USAGE_INPUT_TOKENS] == results[0].input_tokens
    assert a[semconv.GEN_AI_USAGE_OUTPUT_TOKENS] == 3
    assert tuple(a[semconv.GEN_AI_RESPONSE_FINISH_REASONS]) == ("length",)
    assert a[semconv.GEN_AI_RESPONSE_TIME_TO_FIRST_CHUNK] > 0
    assert a[semconv.PTUNE_USAGE_VIRTUAL_TOKENS] == 4
    assert a[semconv.PTUNE_ADAPTER_HASH] == sp.hash
    assert a[semconv.PTUNE_ADAPTER_NAME] == "acme/bot"
    assert a[semconv.PTUNE_ADAPTER_VERSION] == 2
    assert a[semconv.PTUNE_ADAPTER_METHOD] == "prompt_tuning"
    assert a[semconv.PTUNE_DEPLOYMENT] == "acme/bot"  # defaults to the adapter name
    assert a[semconv.PTUNE_TENANT] == "acme"
    assert a[semconv.PTUNE_TRAFFIC] == "production"
    assert a[semconv.PTUNE_BASE_MODEL_NAME] == "tiny-random"
    assert a[semconv.PTUNE_BASE_MODEL_FINGERPRINT] == base64.fingerprint
    assert a[semconv.PTUNE_BATCH_SIZE] == 2  # the refused row never shared a forward pass
    assert semconv.GEN_AI_REQUEST_SEED not in a
    assert semconv.GEN_AI_INPUT_MESSAGES not in a and semconv.GEN_AI_OUTPUT_MESSAGES not in a

    b = by_id[results[1].span_id].attributes
    assert b[semconv.GEN_AI_OPERATION_NAME] == "chat"
    assert b[semconv.GEN_AI_RESPONSE_MODEL] == "tiny-random"
    assert b[semconv.GEN_AI_REQUEST_SEED] == 5
    assert b[semconv.GEN_AI_REQUEST_TOP_K] == 20
    assert b[semconv.PTUNE_TRAFFIC] == "eval"
    assert b[semconv.PTUNE_DEPLOYMENT] == "base@prod"
    assert b[semconv.PTUNE_USAGE_VIRTUAL_TOKENS] == 0
    assert semconv.PTUNE_ADAPTER_HASH not in b

    bad = by_id[results[2].span_id]
    assert bad.status.status_code.name == "ERROR"
    assert bad.attributes[semconv.ERROR_TYPE] == "AdapterNotFoundError"


def test_content_is_captured_only_when_opted_in(base64, spans, monkeypatch):
    monkeypatch.setenv(semconv.ENV_CAPTURE_MESSAGE_CONTENT, "true")
    engine, _ = _engine(base64)
    result = engine.generate([GenerationRequest("hello world", adapter="acme/bot", max_new_tokens=3)])[0]
    row = next(s for s in spans.get_finished_spans() if s.name.startswith("text_completion"))
    inputs = json.loads(row.attributes[semconv.GEN_AI_INPUT_MESSAGES])
    outputs = json.loads(row.attributes[semconv.GEN_AI_OUTPUT_MESSAGES])
    assert inputs[0]["parts"][0]["content"] == "hello world"
    assert outputs[0]["parts"][0]["content"] == result.text
    spans.clear()
    engine_off, _ = _engine(base64, capture_content=False)
    engine_off.generate([GenerationRequest("hello world", adapter="acme/bot", max_new_tokens=3)])
    row = next(s for s in spans.get_finished_spans() if s.name.startswith("text_completion"))
    assert semconv.GEN_AI_INPUT_MESSAGES not in row.attributes


def test_scores_are_span_events_recorded_while_the_span_is_open(base64, spans):
    seen = []

    def length_scorer(request, result):
        return Score("length", value=len(result.token_ids), label="ok", explanation="token count")

    def failing_scorer(request, result):
        raise RuntimeError("scorer bug")

    def hook(request, result):
        seen.append(result.response_id)
        return [Score("online", value=0.5)]

    engine, sp = _engine(base64, on_result=hook)
    result = engine.generate(
        [GenerationRequest("hi", adapter="acme/bot", tenant="t1", max_new_tokens=2,
                           scorers=[length_scorer, failing_scorer])]
    )[0]  # fmt: skip
    assert result.error is None and seen == [result.response_id]
    assert [s.name for s in result.scores] == ["length", "online"]
    row = next(s for s in spans.get_finished_spans() if s.name.startswith("text_completion"))
    events = [e for e in row.events if e.name == semconv.EVENT_EVALUATION_RESULT]
    assert len(events) == 2
    first = events[0].attributes
    assert first[semconv.GEN_AI_EVALUATION_NAME] == "length"
    assert first[semconv.GEN_AI_EVALUATION_SCORE_VALUE] == 2.0
    assert first[semconv.GEN_AI_EVALUATION_SCORE_LABEL] == "ok"
    assert first[semconv.GEN_AI_EVALUATION_EXPLANATION] == "token count"
    assert first[semconv.GEN_AI_RESPONSE_ID] == result.response_id
    assert first[semconv.PTUNE_ADAPTER_HASH] == sp.hash
    assert first[semconv.PTUNE_TENANT] == "t1"
    assert first[semconv.PTUNE_DEPLOYMENT] == "acme/bot"
    assert first[semconv.PTUNE_BASE_MODEL_FINGERPRINT] == base64.fingerprint


def test_broken_tracer_does_not_break_generation(base64):
    class Broken:
        def get_tracer(self, *args, **kwargs):
            return self

        def start_span(self, *args, **kwargs):
            raise RuntimeError("exporter exploded")

    engine, _ = _engine(base64, tracer_provider=Broken())
    results = engine.generate([GenerationRequest("hello", adapter="acme/bot", max_new_tokens=2)])
    assert results[0].error is None and results[0].output_tokens == 2
    assert results[0].trace_id is None


def test_response_ids_are_version_7_uuids_that_sort_by_creation_time(base64):
    import time
    import uuid

    from trace_ptune.runtime.requests import time_ordered_id

    engine, _ = _engine(base64)
    before = time.time_ns() // 1_000_000
    first = engine.generate(
        [GenerationRequest("a", max_new_tokens=1), GenerationRequest("b", max_new_tokens=1)]
    )
    time.sleep(0.002)
    (later,) = engine.generate([GenerationRequest("c", max_new_tokens=1)])
    after = time.time_ns() // 1_000_000
    ids = [r.response_id for r in [*first, later]]
    assert len(set(ids)) == 3 and all(i.startswith("gen-") for i in ids)
    for i in ids:
        u = uuid.UUID(i.removeprefix("gen-"))
        assert u.version == 7 and u.variant == uuid.RFC_4122
        assert before <= u.int >> 80 <= after  # the leading 48 bits are the Unix milliseconds
    assert max(ids[:2]) < ids[2]
    assert time_ordered_id("req-", 0x0123456789AB)[4:16] == "0123456789ab"
