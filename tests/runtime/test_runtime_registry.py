"""The adapter registry: lookup, prompt-KV cache keyed by hash, LRU memory budget, the store."""

from __future__ import annotations

import pytest
import torch

from trace_ptune import semconv
from trace_ptune.adapters.store import AdapterStore
from trace_ptune.errors import AdapterError, AdapterMismatchError, AdapterNotFoundError
from trace_ptune.runtime import Engine, GenerationRequest

from .conftest import make_adapter
from .reference import reference_greedy

PROMPT = "the cat and the dog"


def test_reregistered_name_serves_the_new_tensors_not_a_stale_prefix(base64):
    engine = Engine(base64, store=object())
    old = make_adapter(base64, semconv.METHOD_PROMPT_TUNING, 4, seed=1, name="bot")
    new = make_adapter(base64, semconv.METHOD_PROMPT_TUNING, 4, seed=2, name="bot")
    engine.register(old)
    first = engine.generate([GenerationRequest(PROMPT, adapter="bot", max_new_tokens=6)])[0]
    engine.register(new)
    second = engine.generate([GenerationRequest(PROMPT, adapter="bot", max_new_tokens=6)])[0]
    ids = engine.encode(PROMPT)
    assert first.token_ids == reference_greedy(base64, old, ids, 6)
    assert second.token_ids == reference_greedy(base64, new, ids, 6)
    assert first.token_ids != second.token_ids
    assert (first.adapter_hash, second.adapter_hash) == (old.hash, new.hash)
    # both prefixes are cached, each under its own hash and the base fingerprint
    assert (old.hash, base64.fingerprint) in engine.registry.kv_cache
    assert (new.hash, base64.fingerprint) in engine.registry.kv_cache
    # the old one is still reachable by hash, not by name
    by_hash = engine.generate([GenerationRequest(PROMPT, adapter=old.hash[:19], max_new_tokens=6)])[0]
    assert by_hash.token_ids == first.token_ids


def test_prompt_kv_is_computed_once_per_adapter(base64):
    engine = Engine(base64, store=object())
    engine.register(make_adapter(base64, semconv.METHOD_P_TUNING, 3, seed=1, name="p"))
    cache = engine.registry.kv_cache
    misses = cache.misses
    engine.generate([GenerationRequest(PROMPT, adapter="p", max_new_tokens=2)] * 3)
    engine.generate([GenerationRequest(PROMPT, adapter="p", max_new_tokens=2)])
    assert cache.misses == misses
    assert cache.hits >= 4


def test_lru_eviction_keeps_pinned_and_recently_used_adapters(base64):
    adapters = [make_adapter(base64, semconv.METHOD_PROMPT_TUNING, 8, seed=i, name=f"a{i}") for i in range(4)]
    probe = Engine(base64, store=object(), memory_budget_mb=None)
    probe.register(adapters[0])
    per_adapter = probe.registry.nbytes  # embeddings + cached K/V of one adapter
    engine = Engine(base64, store=object(), memory_budget_mb=2.5 * per_adapter / 2**20)
    engine.register(adapters[0], pin=True)
    engine.register(adapters[1])
    engine.generate([GenerationRequest(PROMPT, adapter="a1", max_new_tokens=1)])
    engine.register(adapters[2])  # over budget: a1 is the only unpinned one -> evicted
    assert "a0" in engine.registry and "a2" in engine.registry
    assert "a1" not in engine.registry
    assert (adapters[1].hash, base64.fingerprint) not in engine.registry.kv_cache
    engine.register(adapters[3])  # evicts a2
    assert "a2" not in engine.registry and "a3" in engine.registry
    assert engine.registry.nbytes <= engine.registry.memory_budget_bytes
    assert engine.registry.evictions == 2
    result = engine.generate([GenerationRequest(PROMPT, adapter="a1", max_new_tokens=1)])[0]
    assert result.error_type == "AdapterNotFoundError"


def test_adapter_larger_than_the_budget_is_refused(base64):
    engine = Engine(base64, store=object(), memory_budget_mb=1e-4)
    with pytest.raises(AdapterError, match="memory budget"):
        engine.register(make_adapter(base64, semconv.METHOD_PROMPT_TUNING, 8, seed=1, name="big"))
    assert len(engine.registry) == 0


def test_unregister_and_lookup_by_name_version_and_hash_prefix(base64):
    engine = Engine(base64, store=object())
    sp = make_adapter(base64, semconv.METHOD_PREFIX_TUNING, 2, seed=1, name="pre")
    sp.version = 3
    engine.register(sp, name="alias")
    for ref in ("pre", "alias", "pre@3", sp.hash, sp.hash[:19], sp.hash.removeprefix("sha256:")[:12]):
        assert engine.registry.resolve(ref).hash == sp.hash
    engine.unregister("alias")
    assert "pre" not in engine.registry
    with pytest.raises(AdapterNotFoundError):
        engine.unregister("pre")


def test_adapters_load_from_the_store_by_name_version_hash_and_deployment(base64, tmp_path):
    store = AdapterStore(tmp_path / "store")
    v1 = store.save(make_adapter(base64, semconv.METHOD_PROMPT_TUNING, 3, seed=1), "acme/bot")
    v2 = store.save(make_adapter(base64, semconv.METHOD_PREFIX_TUNING, 3, seed=2), "acme/bot")
    store.promote("acme/bot@1", "acme/bot@prod")
    engine = Engine(base64, store=store)
    ids = engine.encode(PROMPT)
    requests = [
        GenerationRequest(PROMPT, adapter="acme/bot", max_new_tokens=4),
        GenerationRequest(PROMPT, adapter="acme/bot@1", max_new_tokens=4),
        GenerationRequest(PROMPT, adapter=v2.hash[:19], max_new_tokens=4),
        GenerationRequest(PROMPT, deployment="acme/bot@prod", max_new_tokens=4),
        GenerationRequest(PROMPT, adapter="acme/bot@prod", max_new_tokens=4),
    ]
    results = engine.generate(requests)
    expected = [v2, v1, v2, v1, v1]
    for result, sp in zip(results, expected, strict=True):
        assert result.error is None
        assert result.adapter_hash == sp.hash
        assert result.token_ids == reference_greedy(base64, sp, ids, 4)
    assert results[0].adapter_name == "acme/bot" and results[0].adapter_version == 2
    # a new version saved in the store is served on the next call: no stale name
    v3 = store.save(make_adapter(base64, semconv.METHOD_PROMPT_TUNING, 3, seed=3), "acme/bot")
    again = engine.generate([GenerationRequest(PROMPT, adapter="acme/bot", max_new_tokens=4)])[0]
    assert again.adapter_hash == v3.hash
    assert again.token_ids == reference_greedy(base64, v3, ids, 4)


def test_register_from_a_directory(base64, tmp_path):
    sp = make_adapter(base64, semconv.METHOD_P_TUNING, 4, seed=7, name="dir-bot")
    sp.save(tmp_path / "bot")
    engine = Engine(base64, store=object())
    loaded = engine.register(tmp_path / "bot")
    assert loaded.hash == sp.hash
    result = engine.generate([GenerationRequest(PROMPT, adapter="dir-bot", max_new_tokens=3)])[0]
    assert result.token_ids == reference_greedy(base64, sp, engine.encode(PROMPT), 3)


def test_adapter_for_another_base_is_refused_unless_allowed(base64):
    sp = make_adapter(base64, semconv.METHOD_PROMPT_TUNING, 2, seed=1, name="foreign")
    sp.base_fingerprint = "sha256:" + "0" * 64
    with pytest.raises(AdapterMismatchError):
        Engine(base64, store=object()).register(sp)
    allowed = Engine(base64, store=object(), allow_base_mismatch=True)
    assert allowed.register(sp).hash == sp.hash


def test_adapter_of_the_wrong_shape_is_refused(base64):
    from trace_ptune.adapters.artifact import SoftPrompt

    wrong = SoftPrompt(
        method=semconv.METHOD_PROMPT_TUNING, num_virtual_tokens=2, token_dim=32,
        embeddings=torch.zeros(2, 32, dtype=torch.float64), name="narrow",
    )  # fmt: skip
    with pytest.raises(AdapterMismatchError):
        Engine(base64, store=object()).register(wrong)


def test_deployment_canary_routes_a_stable_share_by_request_id(base64, tmp_path):
    store = AdapterStore(tmp_path / "store")
    primary = store.save(make_adapter(base64, semconv.METHOD_PROMPT_TUNING, 2, seed=1), "bot")
    canary = store.save(make_adapter(base64, semconv.METHOD_PROMPT_TUNING, 2, seed=2), "bot")
    store.promote("bot@1", "bot@prod")
    store.promote("bot@2", "bot@prod", canary_percent=30)
    engine = Engine(base64, store=store)
    requests = [
        GenerationRequest(PROMPT, deployment="bot@prod", request_id=f"req-{i}", max_new_tokens=1)
        for i in range(60)
    ]
    first = [r.adapter_hash for r in engine.generate(requests)]
    second = [r.adapter_hash for r in engine.generate(requests)]
    assert first == second  # the same request id always lands on the same side
    assert set(first) == {primary.hash, canary.hash}
    assert 5 <= first.count(canary.hash) <= 35
    # The same side as the OpenAI server picks for that request id.
    from trace_ptune.runtime.registry import canary_bucket

    assert first == [canary.hash if canary_bucket(f"req-{i}") < 30 else primary.hash for i in range(60)]


def test_engine_is_safe_to_call_from_several_threads(base64):
    import threading

    engine = Engine(base64, store=object())
    sp = make_adapter(base64, semconv.METHOD_PREFIX_TUNING, 3, seed=1, name="t")
    engine.register(sp)
    expected = reference_greedy(base64, sp, engine.encode(PROMPT), 4)
    outputs: list[list[int]] = []

    def worker() -> None:
        for _ in range(3):
            outputs.append(
                engine.generate([GenerationRequest(PROMPT, adapter="t", max_new_tokens=4)])[0].token_ids
            )

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outputs == [expected] * 9
