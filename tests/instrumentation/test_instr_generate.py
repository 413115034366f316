"""generate() spans: token counts from the tensors, finish reasons, batches, streaming, safety."""

from __future__ import annotations

import logging
from typing import Any

import pytest
import torch
from opentelemetry import baggage
from opentelemetry import context as otel_context
from opentelemetry.instrumentation.utils import suppress_instrumentation
from opentelemetry.trace import StatusCode

import trace_ptune
from trace_ptune import semconv

from .conftest import by_name


def _gen_spans(exporter: Any) -> list[Any]:
    return by_name(exporter, semconv.GEN_AI_OPERATION_TEXT_COMPLETION + " ")


def _encode(base: Any, texts: list[str]) -> dict[str, torch.Tensor]:
    return dict(base.tokenizer(texts, return_tensors="pt", padding=True))


def test_single_sequence_gives_one_span_with_counts_from_the_tensors(base, instrumented):
    inputs = _encode(base, ["the cat sat"])
    out = base.model.generate(**inputs, max_new_tokens=6, do_sample=False)
    [span] = instrumented.get_finished_spans()
    a = span.attributes
    assert span.name == f"text_completion {base.name}"
    assert a[semconv.GEN_AI_REQUEST_MODEL] == base.name
    assert a[semconv.PTUNE_BASE_MODEL_FINGERPRINT] == base.fingerprint
    assert a[semconv.GEN_AI_USAGE_INPUT_TOKENS] == inputs["input_ids"].shape[1]
    assert a[semconv.GEN_AI_USAGE_OUTPUT_TOKENS] == out.shape[1] - inputs["input_ids"].shape[1]
    assert a[semconv.GEN_AI_REQUEST_MAX_TOKENS] == 6
    assert a[semconv.GEN_AI_RESPONSE_FINISH_REASONS] == ("length",)
    assert a[semconv.GEN_AI_RESPONSE_MODEL] == base.name  # no adapter
    assert a[semconv.GEN_AI_RESPONSE_ID] == trace_ptune.instrumentation.last_response_ids()[0]
    assert semconv.GEN_AI_INPUT_MESSAGES not in a  # content capture is off by default


def test_end_of_sequence_stops_the_count_and_sets_finish_reason_stop(base, instrumented):
    inputs = _encode(base, ["the cat sat"])
    prompt_len = inputs["input_ids"].shape[1]
    free = base.model.generate(**inputs, max_new_tokens=6, do_sample=False)[0, prompt_len:].tolist()
    eos = free[2]
    expected = free.index(eos) + 1
    instrumented.clear()
    base.model.generate(**inputs, max_new_tokens=6, do_sample=False, eos_token_id=eos, pad_token_id=eos)
    [span] = instrumented.get_finished_spans()
    assert span.attributes[semconv.GEN_AI_USAGE_OUTPUT_TOKENS] == expected
    assert span.attributes[semconv.GEN_AI_RESPONSE_FINISH_REASONS] == ("stop",)


def test_batch_gives_a_call_span_with_one_child_per_row_and_padding_excluded(base, instrumented):
    texts = ["a", "the quick brown fox jumps"]
    inputs = _encode(base, texts)
    base.model.generate(**inputs, max_new_tokens=4, do_sample=False)
    [call] = by_name(instrumented, semconv.SPAN_GENERATE_CALL)
    rows = _gen_spans(instrumented)
    assert len(rows) == 2
    assert all(r.parent.span_id == call.context.span_id for r in rows)
    unpadded = sorted(len(base.tokenizer(t)["input_ids"]) for t in texts)
    assert sorted(r.attributes[semconv.GEN_AI_USAGE_INPUT_TOKENS] for r in rows) == unpadded
    assert unpadded[0] < unpadded[1]  # the short row really was padded
    assert {r.attributes[semconv.PTUNE_BATCH_SIZE] for r in rows} == {2}
    assert len({r.attributes[semconv.GEN_AI_RESPONSE_ID] for r in rows}) == 2


def test_num_return_sequences_gives_one_span_per_sequence(base, instrumented):
    inputs = _encode(base, ["x y", "z"])
    out = base.model.generate(**inputs, max_new_tokens=3, do_sample=True, top_k=5, num_return_sequences=3)
    rows = _gen_spans(instrumented)
    assert out.shape[0] == 6 and len(rows) == 6
    a = rows[0].attributes
    assert a[semconv.GEN_AI_REQUEST_TOP_K] == 5
    inputs_per_row = sorted(r.attributes[semconv.GEN_AI_USAGE_INPUT_TOKENS] for r in rows)
    lengths = inputs["attention_mask"].sum(-1).tolist()
    assert inputs_per_row == sorted(lengths * 3)


def test_streamer_gives_time_to_first_chunk_and_still_receives_every_token(base, instrumented):
    class Collect:
        def __init__(self) -> None:
            self.puts: list[list[int]] = []
            self.ended = False

        def put(self, value: torch.Tensor) -> None:
            self.puts.append(value.flatten().tolist())

        def end(self) -> None:
            self.ended = True

    streamer = Collect()
    inputs = _encode(base, ["one two"])
    base.model.generate(**inputs, max_new_tokens=4, do_sample=False, streamer=streamer)
    [span] = _gen_spans(instrumented)
    assert streamer.ended and len(streamer.puts) == 1 + 4  # the prompt, then each token
    ttfc = span.attributes[semconv.GEN_AI_RESPONSE_TIME_TO_FIRST_CHUNK]
    assert 0 < ttfc <= (span.end_time - span.start_time) / 1e9


def test_exception_from_generate_propagates_unchanged_and_is_recorded(base, instrumented):
    boom = RuntimeError("stop here")

    class Raiser:
        def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
            raise boom

    from transformers import StoppingCriteriaList

    with pytest.raises(RuntimeError) as caught:
        base.model.generate(
            **_encode(base, ["hi"]), max_new_tokens=3, stopping_criteria=StoppingCriteriaList([Raiser()])
        )
    assert caught.value is boom
    [span] = instrumented.get_finished_spans()
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes[semconv.ERROR_TYPE] == "RuntimeError"
    assert any(e.name == "exception" for e in span.events)


def test_suppressed_instrumentation_emits_nothing(base, instrumented):
    with suppress_instrumentation():
        base.model.generate(**_encode(base, ["hi"]), max_new_tokens=2)
    assert instrumented.get_finished_spans() == ()


def test_failure_inside_instrumentation_is_logged_once_and_the_call_proceeds(
    base, instrumented, monkeypatch, caplog
):
    from trace_ptune.instrumentation import _warn
    from trace_ptune.instrumentation import transformers as tf

    def broken(model: Any) -> Any:
        raise KeyError("broken cache")

    monkeypatch.setattr(tf, "_model_info", broken)
    monkeypatch.setattr(_warn, "_seen", set())
    inputs = _encode(base, ["hi"])
    with caplog.at_level(logging.WARNING):
        first = base.model.generate(**inputs, max_new_tokens=3, do_sample=False)
        second = base.model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert torch.equal(first, second) and first.shape[1] == inputs["input_ids"].shape[1] + 3
    warnings = [r for r in caplog.records if "could not trace generate" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING


def test_tags_override_baggage_which_overrides_instrument_defaults(base, instrumented):
    inputs = _encode(base, ["hi"])
    trace_ptune.instrument(tenant="default-tenant", deployment="default-dep")
    base.model.generate(**inputs, max_new_tokens=1)
    token = otel_context.attach(baggage.set_baggage(semconv.PTUNE_TENANT, "from-baggage"))
    try:
        base.model.generate(**inputs, max_new_tokens=1)
        with trace_ptune.tags(tenant="from-tags", traffic="eval"):
            base.model.generate(**inputs, max_new_tokens=1)
    finally:
        otel_context.detach(token)
    got = [
        (
            s.attributes.get(semconv.PTUNE_TENANT),
            s.attributes.get(semconv.PTUNE_DEPLOYMENT),
            s.attributes.get(semconv.PTUNE_TRAFFIC),
        )
        for s in _gen_spans(instrumented)
    ]
    assert got == [
        ("default-tenant", "default-dep", None),
        ("from-baggage", "default-dep", None),
        ("from-tags", "default-dep", "eval"),
    ]


def test_content_is_captured_only_when_opted_in(base, spans):
    from trace_ptune.instrumentation import context

    trace_ptune.uninstrument()
    trace_ptune.instrument(capture_content=True)
    context.register_base_model(base)
    try:
        base.model.generate(**_encode(base, ["the cat"]), max_new_tokens=2, do_sample=False)
    finally:
        trace_ptune.uninstrument()
    [span] = spans.get_finished_spans()
    assert "the cat" in span.attributes[semconv.GEN_AI_INPUT_MESSAGES]
    assert '"role": "assistant"' in span.attributes[semconv.GEN_AI_OUTPUT_MESSAGES]


def test_metrics_carry_token_usage_duration_and_no_content(base, instrumented, metric_reader):
    inputs = _encode(base, ["a b c"])
    base.model.generate(**inputs, max_new_tokens=5, do_sample=False)
    points: dict[str, list[Any]] = {}
    for rm in metric_reader.get_metrics_data().resource_metrics:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                points.setdefault(metric.name, []).extend(metric.data.data_points)
    assert set(points) == {semconv.METRIC_TOKEN_USAGE, semconv.METRIC_OPERATION_DURATION}
    usage = {p.attributes[semconv.GEN_AI_TOKEN_TYPE]: p for p in points[semconv.METRIC_TOKEN_USAGE]}
    assert usage["input"].sum == inputs["input_ids"].shape[1]
    assert usage["output"].sum == 5
    [duration] = points[semconv.METRIC_OPERATION_DURATION]
    assert duration.count == 1 and duration.sum > 0
    assert duration.attributes[semconv.GEN_AI_REQUEST_MODEL] == base.name
    assert set(duration.attributes) <= {
        semconv.GEN_AI_OPERATION_NAME,
        semconv.GEN_AI_PROVIDER_NAME,
        semconv.GEN_AI_REQUEST_MODEL,
        semconv.PTUNE_ADAPTER_HASH,
    }


def test_uninstrument_restores_the_original_functions_exactly():
    from opentelemetry.instrumentation.utils import unwrap  # noqa: F401  (imported for parity)
    from peft import peft_model
    from transformers.generation.utils import GenerationMixin
    from transformers.pipelines.text_generation import TextGenerationPipeline
    from transformers.trainer import Trainer

    trace_ptune.uninstrument()
    originals = {
        "generate": GenerationMixin.__dict__["generate"],
        "pipeline": TextGenerationPipeline.__dict__["__call__"],
        "peft": peft_model.PeftModel.__dict__["generate"],
        "peft_causal": peft_model.PeftModelForCausalLM.__dict__["generate"],
        "init": Trainer.__dict__["__init__"],
        "train": Trainer.__dict__["train"],
    }
    trace_ptune.instrument()
    assert GenerationMixin.__dict__["generate"] is not originals["generate"]
    assert Trainer.__dict__["__init__"] is not originals["init"]
    assert TextGenerationPipeline.__dict__["__call__"] is not originals["pipeline"]
    trace_ptune.uninstrument()
    assert GenerationMixin.__dict__["generate"] is originals["generate"]
    assert TextGenerationPipeline.__dict__["__call__"] is originals["pipeline"]
    assert peft_model.PeftModel.__dict__["generate"] is originals["peft"]
    assert peft_model.PeftModelForCausalLM.__dict__["generate"] is originals["peft_causal"]
    assert Trainer.__dict__["__init__"] is originals["init"]
    assert Trainer.__dict__["train"] is originals["train"]


def _metric_points(metric_reader: Any) -> dict[str, list[Any]]:
    points: dict[str, list[Any]] = {}
    for rm in metric_reader.get_metrics_data().resource_metrics:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                points.setdefault(metric.name, []).extend(metric.data.data_points)
    return points


def test_metric_records_wait_for_collection_and_stay_bounded(base, instrumented, metric_reader, monkeypatch):
    from trace_ptune.instrumentation import transformers as tf

    inputs = _encode(base, ["a b c"])
    base.model.generate(**inputs, max_new_tokens=2, do_sample=False)
    assert len(tf._pending) == 3 * 4  # duration + input and output token usage, not yet recorded
    [duration] = _metric_points(metric_reader)[semconv.METRIC_OPERATION_DURATION]
    assert duration.count == 1 and not tf._pending  # the reader's collection recorded them
    monkeypatch.setattr(tf, "_MAX_PENDING", 4)
    for _ in range(4):
        base.model.generate(**inputs, max_new_tokens=2, do_sample=False)
        assert len(tf._pending) <= 4 * 4
    [duration] = _metric_points(metric_reader)[semconv.METRIC_OPERATION_DURATION]
    assert duration.count == 5


def test_uninstrument_records_pending_metrics(base, instrumented, metric_reader):
    import trace_ptune
    from trace_ptune.instrumentation import transformers as tf

    base.model.generate(**_encode(base, ["a b c"]), max_new_tokens=2, do_sample=False)
    trace_ptune.uninstrument()
    assert not tf._pending
    assert _metric_points(metric_reader)[semconv.METRIC_OPERATION_DURATION][0].count == 1


def test_response_ids_ignore_the_users_random_seed(base, instrumented):
    import random

    ids = []
    for _ in range(2):
        random.seed(0)
        base.model.generate(**_encode(base, ["a b"]), max_new_tokens=1, do_sample=False)
        [rid] = trace_ptune.instrumentation.last_response_ids()
        assert len(rid) == 16 and int(rid, 16) >= 0
        ids.append(rid)
    assert ids[0] != ids[1]
