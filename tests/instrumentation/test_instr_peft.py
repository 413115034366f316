"""PEFT prompt-learning adapters: the span hash is the artifact's hash, cached until tensors change."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from trace_ptune import semconv
from trace_ptune.adapters.peft_interop import import_peft
from trace_ptune.instrumentation import peft_hash

from .conftest import by_name, make_peft


def _generate(base: Any, model: Any, texts: tuple[str, ...] = ("hello there",)) -> None:
    inputs = base.tokenizer(list(texts), return_tensors="pt", padding=True)
    model.generate(**inputs, max_new_tokens=3, do_sample=False)


def _hashes(exporter: Any) -> list[str]:
    return [s.attributes.get(semconv.PTUNE_ADAPTER_HASH) for s in by_name(exporter, "text_completion ")]


@pytest.mark.parametrize("kind", ["prompt", "prefix", "ptuning"])
def test_span_hash_is_the_hash_our_artifact_gives_for_the_same_tensors(base, instrumented, tmp_path, kind):
    model = make_peft(base, kind)
    _generate(base, model)
    [span] = by_name(instrumented, "text_completion ")
    model.save_pretrained(tmp_path)
    artifact = import_peft(tmp_path, base=base)
    a = span.attributes
    assert a[semconv.PTUNE_ADAPTER_HASH] == artifact.hash
    assert a[semconv.PTUNE_ADAPTER_METHOD] == artifact.method
    assert a[semconv.PTUNE_ADAPTER_NUM_VIRTUAL_TOKENS] == 4
    assert a[semconv.PTUNE_USAGE_VIRTUAL_TOKENS] == 4
    assert a[semconv.GEN_AI_RESPONSE_MODEL] == f"{base.name}+ptune:{artifact.hash12}"
    assert a[semconv.GEN_AI_USAGE_INPUT_TOKENS] == len(base.tokenizer("hello there")["input_ids"])


def test_prompt_tuning_hash_matches_a_soft_prompt_built_from_the_embeddings(base, instrumented):
    from trace_ptune.adapters.artifact import SoftPrompt

    model = make_peft(base, "prompt", n=3, seed=7)
    _generate(base, model)
    weight = model.prompt_encoder["default"].embedding.weight.detach().clone()
    sp = SoftPrompt(
        method="prompt_tuning", num_virtual_tokens=3, token_dim=weight.shape[1], embeddings=weight
    )
    assert _hashes(instrumented) == [sp.hash]


def test_hash_is_cached_between_calls_and_recomputed_after_a_training_step(base, instrumented):
    model = make_peft(base, "prompt")
    before = peft_hash.computations
    for _ in range(3):
        _generate(base, model, ("a b", "c"))
    assert peft_hash.computations == before + 1  # three calls, one hash
    first = set(_hashes(instrumented))
    assert len(first) == 1

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=0.5, fused=True)  # fused: no version bump
    inputs = base.tokenizer(["train on this"], return_tensors="pt")
    loss = model(**inputs, labels=inputs["input_ids"]).loss
    loss.backward()
    optimizer.step()

    instrumented.clear()
    _generate(base, model)
    _generate(base, model)
    assert peft_hash.computations == before + 2
    [after] = set(_hashes(instrumented))
    assert after not in first


def test_adapters_of_different_models_are_told_apart(base, instrumented):
    a, b = make_peft(base, "prompt", seed=1), make_peft(base, "prompt", seed=2)
    _generate(base, a)
    _generate(base, b)
    ha, hb = _hashes(instrumented)
    assert ha != hb and ha.startswith("sha256:") and len(ha) == 71


def test_plain_model_spans_have_no_adapter(base, instrumented):
    _generate(base, base.model)
    [span] = by_name(instrumented, "text_completion ")
    assert semconv.PTUNE_ADAPTER_HASH not in span.attributes


def test_peft_alone_annotates_the_current_span(base, spans):
    import trace_ptune
    from trace_ptune.instrumentation.peft import PeftInstrumentor
    from trace_ptune.telemetry import get_tracer

    trace_ptune.uninstrument()
    model = make_peft(base, "prompt")
    PeftInstrumentor().instrument()
    try:
        with get_tracer().start_as_current_span("my request"):
            _generate(base, model)
    finally:
        PeftInstrumentor().uninstrument()
    [span] = spans.get_finished_spans()
    assert span.attributes[semconv.PTUNE_ADAPTER_HASH] == peft_hash.adapter_identity(model).hash


def test_a_replaced_parameter_or_an_in_place_write_invalidates_the_cached_hash(base, instrumented):
    model = make_peft(base, "prompt")
    _generate(base, model)
    before = peft_hash.computations
    encoder = model.prompt_encoder["default"]
    with torch.no_grad():
        encoder.embedding.weight = torch.nn.Parameter(encoder.embedding.weight * 2)
    _generate(base, model)
    assert peft_hash.computations == before + 1  # a new Parameter object: recomputed
    with torch.no_grad():
        encoder.embedding.weight.add_(1.0)  # an in-place write bumps the version counter
    _generate(base, model)
    _generate(base, model)
    assert peft_hash.computations == before + 2
    assert len(set(_hashes(instrumented))) == 3
