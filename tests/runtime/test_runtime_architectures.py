"""Decoders beyond Llama: every row of a mixed batch equals its no-cache reference.

Each architecture exercises something the tiny Llama does not: Falcon's multi-query attention
(one K/V head whatever ``num_kv_heads`` says, so the K/V layout must be measured, not read from
the config), GPT-NeoX's partial rotary embedding without grouped-query attention, Phi-3's fused
QKV projection, Qwen3's query/key norms and Gemma 3's interleaved sliding and global layers.
"""

from __future__ import annotations

import pytest
import torch

from tests.tiny_arch import build_tiny
from trace_ptune import semconv
from trace_ptune.errors import ModelLoadError
from trace_ptune.models import load_model
from trace_ptune.models.attention import kv_layout
from trace_ptune.runtime import Engine

from .conftest import make_adapter
from .reference import assert_rows_match_reference

ARCHITECTURES = {
    "falcon": {"multi_query": True},
    "gpt_neox": {},
    "phi3": {"num_key_value_heads": 2},
    "qwen3": {"num_key_value_heads": 2, "head_dim": 16},
    "gemma3_text": {"num_key_value_heads": 2, "head_dim": 16, "sliding_window": 12},
}
PROMPTS = ["hello world", "one two three four five six seven eight nine ten", "the cat and the dog"]


@pytest.fixture(scope="module", params=sorted(ARCHITECTURES))
def arch_base(request, tmp_path_factory, _models):
    tokenizer = _models["float64"].tokenizer
    directory = build_tiny(
        request.param, tokenizer, tmp_path_factory.mktemp(request.param), **ARCHITECTURES[request.param]
    )
    return request.param, load_model(str(directory), dtype=torch.float64)


def test_kv_layout_is_what_the_cache_holds(arch_base):
    kind, base = arch_base
    layers, kv_heads, head_dim = kv_layout(base.model)
    assert (layers, head_dim) == (2, 16)
    assert kv_heads == (1 if kind == "falcon" else 4 if kind == "gpt_neox" else 2)
    assert (base.num_layers, base.num_kv_heads, base.head_dim) == (layers, kv_heads, head_dim)


def test_mixed_batch_matches_reference_on_other_architectures(arch_base):
    _, base = arch_base
    adapters = {
        "pt5": make_adapter(base, semconv.METHOD_PROMPT_TUNING, 5, seed=1, name="pt5"),
        "ptune4": make_adapter(base, semconv.METHOD_P_TUNING, 4, seed=3, name="ptune4"),
        "prefix3": make_adapter(base, semconv.METHOD_PREFIX_TUNING, 3, seed=4, name="prefix3"),
    }
    assert_rows_match_reference(base, adapters, [(n, p, 8) for p in PROMPTS for n in (None, *adapters)])


@pytest.mark.parametrize(
    ("kind", "overrides"),
    [("bloom", {"n_layer": 2, "n_head": 4}), ("mpt", {"n_layers": 2, "n_heads": 4, "d_model": 64})],
)
def test_alibi_models_are_refused_in_one_sentence(kind, overrides, tmp_path, _models):
    # ALiBi biases count key columns, which padding inside a row shifts: rows came out wrong
    tokenizer = _models["float64"].tokenizer
    base = load_model(str(build_tiny(kind, tokenizer, tmp_path / kind, **overrides)))
    with pytest.raises(ModelLoadError, match="uses ALiBi attention biases") as info:
        Engine(base, store=object())
    assert "\n" not in str(info.value)


def test_a_latent_attention_cache_is_refused_in_one_sentence(tmp_path, _models):
    # DeepSeek-V3's multi-head latent attention caches keys and values of different widths
    directory = build_tiny(
        "deepseek_v3", _models["float64"].tokenizer, tmp_path / "mla",
        kv_lora_rank=16, q_lora_rank=16, qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=16,
        n_routed_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, first_k_dense_replace=2,
    )  # fmt: skip
    base = load_model(str(directory))
    with pytest.raises(ModelLoadError, match="do not all hold keys and values of one") as info:
        Engine(base, store=object())
    assert "\n" not in str(info.value)
    # still described by `trace-ptune models info`, without a K/V layout
    described = base.info()
    assert (described["model_type"], described["num_layers"], described["num_kv_heads"]) == (
        "deepseek_v3",
        2,
        None,
    )
