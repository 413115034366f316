"""The GenAI operation: ``chat`` for pipelines called with chat input and inside tags(operation=)."""

from __future__ import annotations

from typing import Any

import pytest

import trace_ptune
from trace_ptune import semconv
from trace_ptune.errors import ConfigError

MESSAGES = [{"role": "user", "content": "the cat sat"}]


@pytest.fixture(scope="module")
def pipe(base: Any) -> Any:
    from transformers import pipeline

    return pipeline("text-generation", model=base.model, tokenizer=base.tokenizer)


def _operations(exporter: Any) -> list[tuple[str, str]]:
    return [
        (s.name, s.attributes[semconv.GEN_AI_OPERATION_NAME])
        for s in exporter.get_finished_spans()
        if s.name != semconv.SPAN_GENERATE_CALL
    ]


def _duration_operations(metric_reader: Any) -> set[str]:
    found = set()
    for rm in metric_reader.get_metrics_data().resource_metrics:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                if metric.name == semconv.METRIC_OPERATION_DURATION:
                    found |= {p.attributes[semconv.GEN_AI_OPERATION_NAME] for p in metric.data.data_points}
    return found


def test_tiny_random_tokenizer_has_a_chat_template(base):
    assert base.tokenizer.chat_template


def test_pipeline_with_chat_messages_gives_chat_spans(base, pipe, instrumented, metric_reader):
    out = pipe(MESSAGES, max_new_tokens=3, do_sample=False)
    assert out[0]["generated_text"][-1]["role"] == "assistant"
    assert _operations(instrumented) == [(f"chat {base.name}", semconv.GEN_AI_OPERATION_CHAT)]
    assert _duration_operations(metric_reader) == {semconv.GEN_AI_OPERATION_CHAT}


def test_pipeline_with_several_conversations_gives_chat_spans(base, pipe, instrumented):
    pipe([MESSAGES, [{"role": "user", "content": "a b"}]], max_new_tokens=2, do_sample=False)
    assert _operations(instrumented) == [(f"chat {base.name}", semconv.GEN_AI_OPERATION_CHAT)] * 2


def test_pipeline_with_a_chat_object_gives_chat_spans(base, pipe, instrumented):
    from transformers.pipelines.text_generation import Chat

    pipe(Chat(MESSAGES), max_new_tokens=2, do_sample=False)
    assert _operations(instrumented) == [(f"chat {base.name}", semconv.GEN_AI_OPERATION_CHAT)]


def test_pipeline_with_plain_text_gives_text_completion_spans(base, pipe, instrumented, metric_reader):
    pipe("the cat sat", max_new_tokens=3, do_sample=False)
    pipe(["a b", "the dog"], max_new_tokens=2, do_sample=False)
    assert (
        _operations(instrumented)
        == [(f"text_completion {base.name}", semconv.GEN_AI_OPERATION_TEXT_COMPLETION)] * 3
    )
    assert _duration_operations(metric_reader) == {semconv.GEN_AI_OPERATION_TEXT_COMPLETION}


def test_chat_does_not_leak_past_the_pipeline_call(base, pipe, instrumented):
    pipe(MESSAGES, max_new_tokens=2, do_sample=False)
    inputs = base.tokenizer(["the cat"], return_tensors="pt")
    base.model.generate(**inputs, max_new_tokens=2, do_sample=False)
    assert [op for _, op in _operations(instrumented)] == [
        semconv.GEN_AI_OPERATION_CHAT,
        semconv.GEN_AI_OPERATION_TEXT_COMPLETION,
    ]


def test_tags_operation_marks_a_direct_chat_template_generate_as_chat(base, instrumented):
    inputs = base.tokenizer.apply_chat_template(
        MESSAGES, add_generation_prompt=True, return_dict=True, return_tensors="pt"
    )
    with trace_ptune.tags(operation="chat", tenant="acme"):
        base.model.generate(**inputs, max_new_tokens=2, do_sample=False)
    base.model.generate(**inputs, max_new_tokens=2, do_sample=False)
    [chat, plain] = instrumented.get_finished_spans()
    assert chat.name == f"chat {base.name}"
    assert chat.attributes[semconv.GEN_AI_OPERATION_NAME] == semconv.GEN_AI_OPERATION_CHAT
    assert chat.attributes[semconv.PTUNE_TENANT] == "acme"
    assert plain.name == f"text_completion {base.name}"
    assert plain.attributes[semconv.GEN_AI_OPERATION_NAME] == semconv.GEN_AI_OPERATION_TEXT_COMPLETION


def test_tags_operation_overrides_pipeline_detection(base, pipe, instrumented):
    with trace_ptune.tags(operation="text_completion"):
        pipe(MESSAGES, max_new_tokens=2, do_sample=False)
    with trace_ptune.tags(operation="chat"):
        pipe("the cat", max_new_tokens=2, do_sample=False)
    assert [op for _, op in _operations(instrumented)] == [
        semconv.GEN_AI_OPERATION_TEXT_COMPLETION,
        semconv.GEN_AI_OPERATION_CHAT,
    ]


def test_tags_rejects_an_unknown_operation():
    with pytest.raises(ConfigError, match="operation 'embeddings'"), trace_ptune.tags(operation="embeddings"):
        pass


def test_uninstrument_restores_the_pipeline_call_and_stops_chat_detection(base, pipe, spans):
    from transformers.pipelines.text_generation import TextGenerationPipeline

    trace_ptune.uninstrument()
    original = TextGenerationPipeline.__dict__["__call__"]
    trace_ptune.instrument()
    try:
        assert TextGenerationPipeline.__dict__["__call__"] is not original
        trace_ptune.instrument()  # a second call wraps nothing twice
        assert TextGenerationPipeline.__dict__["__call__"].__wrapped__ is original
    finally:
        trace_ptune.uninstrument()
    assert TextGenerationPipeline.__dict__["__call__"] is original
    pipe(MESSAGES, max_new_tokens=2, do_sample=False)
    assert spans.get_finished_spans() == ()


HOOK_SCRIPT = """
import sys
import trace_ptune

trace_ptune.instrument()
assert "transformers.pipelines.text_generation" not in sys.modules, "imported by instrument()"
from transformers.pipelines.text_generation import TextGenerationPipeline

wrapped = TextGenerationPipeline.__dict__["__call__"]
assert hasattr(wrapped, "__wrapped__"), "not wrapped on import"
trace_ptune.uninstrument()
assert TextGenerationPipeline.__dict__["__call__"] is wrapped.__wrapped__, "not restored"
print("ok")
"""


def test_pipeline_imported_after_instrument_is_wrapped_then_restored(tmp_path):
    """instrument() does not import the pipelines (~0.7 s); their import wraps the call."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", HOOK_SCRIPT], capture_output=True, text=True, timeout=300, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "ok"
