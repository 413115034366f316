"""Sliding-window models: every row of a mixed batch equals its no-cache reference.

A sliding window counted in cache columns is wrong for a batch whose rows are padded between
their soft prompt and their text; the engine builds position-based masks for these models.
Covered: all layers sliding (Mistral), full and sliding layers mixed (Qwen2 with
``use_sliding_window``), and eager attention with additive masks (Gemma 2).
"""

from __future__ import annotations

import pytest
import torch

from tests.tiny_arch import build_tiny
from trace_ptune import semconv
from trace_ptune.errors import ModelLoadError
from trace_ptune.models import load_model
from trace_ptune.models.attention import sliding_window
from trace_ptune.runtime import Engine

from .conftest import make_adapter
from .reference import assert_rows_match_reference, reference_greedy

WINDOW = 12
PROMPTS = [
    "hello world",  # shorter than the window, with or without its soft prompt
    "the cat and the dog are in the sun",  # crosses the window while decoding
    "one two three four five six seven eight nine ten",  # longer than the window
]


SLIDING = {
    "mistral": {"num_key_value_heads": 2, "head_dim": 16, "sliding_window": WINDOW},
    # layer 0 full, layer 1 sliding
    "qwen2": {
        "num_key_value_heads": 2,
        "sliding_window": WINDOW,
        "use_sliding_window": True,
        "max_window_layers": 1,
    },
    "gemma2": {"num_key_value_heads": 2, "head_dim": 16, "sliding_window": WINDOW},
}


@pytest.fixture(scope="module", params=sorted(SLIDING))
def sliding_base(request, tmp_path_factory, _models):
    tokenizer = _models["float64"].tokenizer
    directory = build_tiny(
        request.param,
        tokenizer,
        tmp_path_factory.mktemp(f"{request.param}-sliding"),
        **SLIDING[request.param],
    )
    return load_model(str(directory), dtype=torch.float64)


def test_sliding_window_is_detected_per_model(sliding_base, base64):
    assert sliding_window(sliding_base.config) == WINDOW
    assert sliding_window(base64.config) is None


def test_mixed_batch_matches_reference_on_sliding_window_models(sliding_base):
    base = sliding_base
    adapters = {
        "pt5": make_adapter(base, semconv.METHOD_PROMPT_TUNING, 5, seed=1, name="pt5"),
        "ptune7": make_adapter(base, semconv.METHOD_P_TUNING, 7, seed=3, name="ptune7"),
        "prefix3": make_adapter(base, semconv.METHOD_PREFIX_TUNING, 3, seed=4, name="prefix3"),
        "pt15": make_adapter(base, semconv.METHOD_PROMPT_TUNING, 15, seed=5, name="pt15"),  # > window
    }
    plan = [(name, prompt, 10) for prompt in PROMPTS for name in (None, "pt5", "ptune7", "prefix3", "pt15")]
    results = assert_rows_match_reference(base, adapters, plan)
    # the soft prompts matter on these models too, so the comparison can tell rows apart
    by_adapter = {name: r.token_ids for (name, p, _), r in zip(plan, results, strict=True) if p == PROMPTS[0]}
    assert len({tuple(v) for v in by_adapter.values()}) == len(by_adapter)


@pytest.mark.parametrize("method", [semconv.METHOD_PROMPT_TUNING, semconv.METHOD_PREFIX_TUNING])
def test_trainer_evaluation_generation_matches_reference_on_sliding_window_models(sliding_base, method):
    from trace_ptune.tuning.evaluation import greedy_generate

    base = sliding_base
    adapter = make_adapter(base, method, 5, seed=2)
    prompt = adapter.prefix_kv if method == semconv.METHOD_PREFIX_TUNING else adapter.embeddings
    ids = [base.tokenizer.encode(p, add_special_tokens=False) for p in PROMPTS]
    got = greedy_generate(base.model, method, prompt, ids, max_new_tokens=8, eos_id=None, pad_id=0)
    assert got == [reference_greedy(base, adapter, row, 8) for row in ids]


def test_a_sliding_window_model_on_an_attention_without_masks_is_refused_up_front(sliding_base):
    config = sliding_base.model.config
    saved = config._attn_implementation
    config._attn_implementation = "flash_attention_2"
    try:
        with pytest.raises(ModelLoadError, match="attn_implementation='sdpa' or 'eager'"):
            Engine(sliding_base, store=object())
    finally:
        config._attn_implementation = saved


def test_evaluation_of_a_model_trained_with_an_attention_without_masks_uses_sdpa(sliding_base):
    # training may run flash attention (right padding needs no mask); the evaluation's padded
    # rows need position-based masks, so it switches to SDPA and back
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    from trace_ptune.models.attention import masked_attention
    from trace_ptune.tuning.data import encode_rows
    from trace_ptune.tuning.evaluation import evaluate, greedy_generate

    AttentionInterface.register("test_no_4d_masks", sdpa_attention_forward)
    AttentionMaskInterface.register("test_no_4d_masks", sdpa_mask)
    base = sliding_base
    saved = base.model.config._attn_implementation
    base.model.set_attn_implementation("test_no_4d_masks")
    adapter = make_adapter(base, semconv.METHOD_PROMPT_TUNING, 5, seed=2)
    ids = [base.tokenizer.encode(p, add_special_tokens=False) for p in PROMPTS]
    try:
        args = (base.model, adapter.method, adapter.embeddings, ids)
        with pytest.raises(ModelLoadError, match="attn_implementation='sdpa' or 'eager'"):
            greedy_generate(*args, max_new_tokens=6, eos_id=None, pad_id=0)  # padded rows need masks
        with masked_attention(base.model):
            got = greedy_generate(*args, max_new_tokens=6, eos_id=None, pad_id=0)
        assert base.model.config._attn_implementation == "test_no_4d_masks"
        # the trainer's evaluation generates under that switch (its loss pass runs the stand-in
        # attention itself, which is SDPA's: Gemma 2's soft-capping needs eager, so not there)
        if base.config.model_type != "gemma2":
            rows = [{"input": p, "target": " yes"} for p in PROMPTS]
            examples, _ = encode_rows(rows, base.tokenizer, max_length=64)
            result = evaluate(base.model, base.tokenizer, adapter.method, adapter.embeddings, rows, examples,
                              batch_size=8, max_new_tokens=4)  # fmt: skip
            assert len(result.values["exact_match"]) == len(PROMPTS)
            assert base.model.config._attn_implementation == "test_no_4d_masks"
    finally:
        base.model.set_attn_implementation(saved)
    assert got == [reference_greedy(base, adapter, row, 6) for row in ids]
