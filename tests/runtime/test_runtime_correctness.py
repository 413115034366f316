"""Every row of a mixed batch equals its single-request, no-cache reference."""

from __future__ import annotations

import pytest
import torch

from trace_ptune import semconv
from trace_ptune.models.attention import kv_layout
from trace_ptune.runtime import Engine, GenerationRequest, batching
from trace_ptune.runtime.kvcache import compute_prefix_kv

from .conftest import make_adapter
from .reference import reference_greedy, reference_logits

PROMPTS = [
    "hello world",
    "the cat and the dog are in the sun",
    "what is the answer",
    "yes",
    "one two three four five six seven eight nine ten",
    "good movie",
]


def _adapters(base):
    return {
        "pt5": make_adapter(base, semconv.METHOD_PROMPT_TUNING, 5, seed=1, name="pt5"),
        "pt2": make_adapter(base, semconv.METHOD_PROMPT_TUNING, 2, seed=2, name="pt2"),
        "ptune7": make_adapter(base, semconv.METHOD_P_TUNING, 7, seed=3, name="ptune7"),
        "prefix3": make_adapter(base, semconv.METHOD_PREFIX_TUNING, 3, seed=4, name="prefix3"),
        "prefix6": make_adapter(base, semconv.METHOD_PREFIX_TUNING, 6, seed=5, name="prefix6"),
    }


def _engine(base, adapters, **kwargs) -> Engine:
    engine = Engine(base, store=object(), **kwargs)
    for sp in adapters.values():
        engine.register(sp)
    return engine


def test_mixed_batch_matches_reference_token_for_token_in_float64(base64):
    adapters = _adapters(base64)
    engine = _engine(base64, adapters)
    plan = [
        ("pt5", PROMPTS[0], 8),
        ("prefix3", PROMPTS[1], 6),
        (None, PROMPTS[2], 8),
        ("ptune7", PROMPTS[3], 3),  # finishes early: the batch shrinks mid-way
        ("pt2", PROMPTS[4], 8),
        ("prefix6", PROMPTS[5], 7),
        ("pt5", PROMPTS[1], 5),  # the same adapter twice in one batch
        (None, PROMPTS[3], 8),
    ]
    requests = [GenerationRequest(p, adapter=a, max_new_tokens=k) for a, p, k in plan]
    results = engine.generate(requests)
    # the soft prompts change the output, so the test can tell adapters apart
    assert results[0].token_ids != reference_greedy(base64, None, engine.encode(PROMPTS[0]), 8)
    for (name, prompt, k), result in zip(plan, results, strict=True):
        adapter = adapters[name] if name else None
        expected = reference_greedy(base64, adapter, engine.encode(prompt), k)
        assert result.error is None
        assert result.token_ids == expected, (name, prompt)
        assert result.finish_reason == "length"
        assert result.virtual_tokens == (adapter.num_virtual_tokens if adapter else 0)
        assert result.input_tokens == len(engine.encode(prompt))
        assert result.text == base64.tokenizer.decode(expected, skip_special_tokens=True)


def test_prompt_kv_of_embeddings_equals_the_keys_of_a_full_forward(base64):
    sp = make_adapter(base64, semconv.METHOD_PROMPT_TUNING, 4, seed=9)
    kv = compute_prefix_kv(base64.model, sp)
    assert tuple(kv.shape) == (base64.num_layers, 2, base64.num_kv_heads, 4, base64.head_dim)
    from transformers import DynamicCache

    cache = DynamicCache()
    base64.model(inputs_embeds=sp.embeddings[None], cache=cache, use_cache=True)
    for layer in range(base64.num_layers):
        torch.testing.assert_close(kv[layer, 0], cache.layers[layer].keys[0], rtol=0, atol=0)


def test_float32_logits_within_tolerance_and_tokens_equal_where_the_margin_is_clear(base32):
    adapters = _adapters(base32)
    engine = _engine(base32, adapters)
    plan = [("pt5", PROMPTS[0]), ("prefix3", PROMPTS[1]), (None, PROMPTS[2]), ("ptune7", PROMPTS[4])]
    entries = [engine.registry.resolve(a) if a else None for a, _ in plan]
    prompts = [engine.encode(p) for _, p in plan]
    # the reference's own greedy path, teacher-forced through the batch so logits stay comparable
    paths = [
        reference_greedy(base32, adapters[a] if a else None, ids, 6)
        for (a, _), ids in zip(plan, prompts, strict=True)
    ]
    kv, logits = batching.prefill(
        base32.model,
        [engine.registry.prefix_kv(e) if e else None for e in entries],
        prompts,
        layout=kv_layout(base32.model),
        pad_token_id=engine.pad_token_id,
    )
    clear = 0
    for step in range(6):
        for row, ((name, _), ids) in enumerate(zip(plan, prompts, strict=True)):
            adapter = adapters[name] if name else None
            ref = reference_logits(base32, adapter, ids + paths[row][:step])
            torch.testing.assert_close(logits[row], ref, rtol=1e-4, atol=1e-4)
            top2 = torch.topk(ref, 2).values
            if float(top2[0] - top2[1]) > 1e-3:
                assert int(logits[row].argmax()) == paths[row][step]
                clear += 1
        kv.last_tokens = torch.tensor([p[step] for p in paths])
        logits = batching.decode(base32.model, kv)
    assert clear >= 12  # the check above actually ran


def test_rows_joining_a_running_batch_match_reference(base64):
    adapters = _adapters(base64)
    engine = _engine(base64, adapters)
    first = [
        GenerationRequest(PROMPTS[0], adapter="pt5", max_new_tokens=6),
        GenerationRequest(PROMPTS[4], max_new_tokens=6),
    ]
    later = [
        GenerationRequest(PROMPTS[1], adapter="prefix6", max_new_tokens=5),
        GenerationRequest(PROMPTS[3], adapter="ptune7", max_new_tokens=4),
    ]
    state = engine.start(first)
    results = {}
    for step in range(100):
        if step == 2:
            engine.add(state, later)
        for event in engine.step(state):
            if event.result is not None:
                results[event.request.prompt, event.request.adapter] = event.result
        if state.done:
            break
    assert len(results) == 4
    for request in first + later:
        adapter = adapters[request.adapter] if request.adapter else None
        expected = reference_greedy(base64, adapter, engine.encode(request.prompt), request.max_new_tokens)
        assert results[request.prompt, request.adapter].token_ids == expected


def test_streamed_text_deltas_add_up_to_the_result(base64):
    engine = _engine(base64, _adapters(base64))
    requests = [
        GenerationRequest(prompt, adapter=adapter, max_new_tokens=n)
        for prompt, adapter, n in zip(
            PROMPTS, ["pt2", None, "prefix3", "ptune7"], [10, 7, 5, 3], strict=False
        )
    ]
    state = engine.start(requests)
    pieces: dict[int, list[str]] = {}
    results = {}
    while not state.done:
        for event in engine.step(state):
            pieces.setdefault(event.seq_id, []).append(event.text)
            if event.result is not None:
                results[event.seq_id] = event.result
    assert len(results) == len(requests)
    for seq_id, result in results.items():
        assert result.text, "every row generates some text"
        assert "".join(pieces[seq_id]) == result.text  # the last step's piece is not dropped
        assert len(pieces[seq_id]) == result.output_tokens


def test_more_requests_than_batch_slots_wait_their_turn(base64):
    adapters = _adapters(base64)
    engine = _engine(base64, adapters, max_batch_size=2)
    plan = [("pt5", 0), (None, 1), ("prefix3", 2), ("pt2", 3), ("ptune7", 4)]
    results = engine.generate([GenerationRequest(PROMPTS[i], adapter=a, max_new_tokens=4) for a, i in plan])
    for (name, i), result in zip(plan, results, strict=True):
        adapter = adapters[name] if name else None
        assert result.token_ids == reference_greedy(base64, adapter, engine.encode(PROMPTS[i]), 4)
        assert result.finish_reason == "length"


@pytest.mark.parametrize("adapter", [None, "pt5"])
def test_seeded_sampling_does_not_depend_on_batch_neighbours(base64, adapter):
    engine = _engine(base64, _adapters(base64))
    request = dict(prompt=PROMPTS[2], adapter=adapter, temperature=1.5, top_p=0.9, top_k=50, seed=123)
    alone = engine.generate([GenerationRequest(**request, max_new_tokens=8)])[0]
    mixed = engine.generate(
        [
            GenerationRequest(PROMPTS[0], adapter="prefix3", temperature=1.0, seed=5, max_new_tokens=8),
            GenerationRequest(**request, max_new_tokens=8),
            GenerationRequest(PROMPTS[1], max_new_tokens=3),
        ]
    )[1]
    assert alone.token_ids == mixed.token_ids
    other_seed = engine.generate([GenerationRequest(**{**request, "seed": 124}, max_new_tokens=8)])[0]
    assert other_seed.token_ids != alone.token_ids


def test_top_k_one_is_greedy(base64):
    engine = _engine(base64, _adapters(base64))
    greedy = engine.generate([GenerationRequest(PROMPTS[1], adapter="pt2", max_new_tokens=6)])[0]
    sampled = engine.generate(
        [GenerationRequest(PROMPTS[1], adapter="pt2", max_new_tokens=6, temperature=2.0, top_k=1, seed=1)]
    )[0]
    assert sampled.token_ids == greedy.token_ids


def test_stop_string_trims_the_text_and_finishes_with_stop(base64):
    engine = _engine(base64, _adapters(base64))
    full = engine.generate([GenerationRequest(PROMPTS[4], adapter="pt5", max_new_tokens=12)])[0]
    stop = full.text[len(full.text) // 2 : len(full.text) // 2 + 2]
    assert stop.strip(), full.text
    cut = engine.generate([GenerationRequest(PROMPTS[4], adapter="pt5", max_new_tokens=12, stop=[stop])])[0]
    assert cut.finish_reason == "stop"
    assert cut.text == full.text[: full.text.index(stop)]
    assert stop not in cut.text
    assert cut.output_tokens < 12


def test_end_of_sequence_token_finishes_with_stop(base64):
    engine = _engine(base64, _adapters(base64))
    full = engine.generate([GenerationRequest(PROMPTS[0], max_new_tokens=8)])[0]
    engine.eos_token_ids = frozenset({full.token_ids[3]})
    first = full.token_ids.index(full.token_ids[3])
    ended = engine.generate([GenerationRequest(PROMPTS[0], max_new_tokens=8)])[0]
    assert ended.finish_reason == "stop"
    assert ended.token_ids == full.token_ids[: first + 1]
    assert ended.text == base64.tokenizer.decode(full.token_ids[:first], skip_special_tokens=True)


def test_chat_request_applies_the_chat_template(base64):
    engine = _engine(base64, _adapters(base64))
    messages = [{"role": "user", "content": "hello world"}]
    ids = engine.encode(messages)
    templated = base64.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert templated.endswith("assistant\n")
    assert ids == base64.tokenizer(templated, add_special_tokens=False)["input_ids"]
    result = engine.generate([GenerationRequest(messages, adapter="prefix3", max_new_tokens=4)])[0]
    assert result.token_ids == reference_greedy(base64, engine.registry.resolve("prefix3").adapter, ids, 4)


def test_token_id_prompts_run_as_given(base64):
    engine = _engine(base64, _adapters(base64))
    ids = [400, 17, 23, 99, 5, 301]
    result = engine.generate([GenerationRequest(ids, adapter="prefix6", max_new_tokens=4)])[0]
    assert result.input_tokens == 6
    assert result.token_ids == reference_greedy(base64, engine.registry.resolve("prefix6").adapter, ids, 4)
    bad = engine.generate([GenerationRequest([1, 512], max_new_tokens=2)])[0]
    assert bad.error_type == "GenerationError" and "512" in bad.error


def test_one_adapter_for_every_row_with_different_prompt_lengths(base64):
    adapters = _adapters(base64)
    engine = _engine(base64, adapters)
    results = engine.generate([GenerationRequest(p, adapter="prefix3", max_new_tokens=4) for p in PROMPTS])
    for prompt, result in zip(PROMPTS, results, strict=True):
        assert result.token_ids == reference_greedy(base64, adapters["prefix3"], engine.encode(prompt), 4)


def test_prefill_with_reserve_writes_prompt_and_decoded_tokens_into_one_buffer(base64):
    """With ``reserve`` the cache is allocated once: the prompt and every decoded token land in
    place (no copy at the first decode step), and the logits equal those of a plain cache."""
    sp = make_adapter(base64, semconv.METHOD_PREFIX_TUNING, 3, seed=4)
    prefix = compute_prefix_kv(base64.model, sp)
    prompts = [[5, 6, 7, 8], [9, 10]]
    layout = kv_layout(base64.model)
    plain, plain_logits = batching.prefill(
        base64.model, [prefix, None], prompts, layout=layout, pad_token_id=0
    )
    grown, grown_logits = batching.prefill(
        base64.model, [prefix, None], prompts, layout=layout, pad_token_id=0, reserve=3
    )
    torch.testing.assert_close(grown_logits, plain_logits, rtol=0, atol=1e-12)
    before = [layer.keys.data_ptr() for layer in grown.cache.layers]
    for state in (plain, grown):
        state.last_tokens = torch.tensor([11, 12])
    for _ in range(3):
        torch.testing.assert_close(
            batching.decode(base64.model, grown), batching.decode(base64.model, plain), rtol=0, atol=1e-12
        )
        plain.last_tokens = grown.last_tokens = torch.tensor([13, 14])
    assert [layer.keys.data_ptr() for layer in grown.cache.layers] == before
    assert grown.cache.layers[0].keys.shape[2] == 3 + 4 + 3


def test_cache_room_follows_decoded_tokens_not_max_new_tokens(base64):
    """A large ``max_new_tokens`` does not reserve its whole cache at once: a layer grows by at
    most its own length (at least 64 columns) when full, and the logits stay those of a plain
    cache across the growth."""
    sp = make_adapter(base64, semconv.METHOD_PROMPT_TUNING, 3, seed=5)
    prefix = compute_prefix_kv(base64.model, sp)
    prompts = [[5, 6, 7, 8], [9, 10]]
    layout = kv_layout(base64.model)
    plain, _ = batching.prefill(base64.model, [prefix, None], prompts, layout=layout, pad_token_id=0)
    grown, _ = batching.prefill(
        base64.model, [prefix, None], prompts, layout=layout, pad_token_id=0, reserve=10_000
    )
    capacity = {grown.cache.layers[0]._key_buffer.shape[2]}
    assert capacity == {3 + 4 + 64}
    for step in range(90):
        tokens = torch.tensor([11 + step % 7, 12 + step % 5])
        plain.last_tokens, grown.last_tokens = tokens, tokens.clone()
        grown.reserve = 10_000 - step
        torch.testing.assert_close(
            batching.decode(base64.model, grown), batching.decode(base64.model, plain), rtol=0, atol=1e-12
        )
        capacity.add(grown.cache.layers[0]._key_buffer.shape[2])
    assert grown.cache.layers[0].keys.shape[2] == 3 + 4 + 90
    assert sorted(capacity) == [71, 71 + 71]  # one growth, by the layer's own length
