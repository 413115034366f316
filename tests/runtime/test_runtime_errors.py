"""A bad request fails alone: the other rows of its batch complete, correctly."""

from __future__ import annotations

import pytest

from trace_ptune import semconv
from trace_ptune.runtime import Engine, GenerationRequest

from .conftest import make_adapter
from .reference import reference_greedy

GOOD = "hello world"


@pytest.mark.parametrize(
    ("bad", "error_type", "needle"),
    [
        (dict(adapter="nobody"), "AdapterNotFoundError", "nobody"),
        (dict(adapter="foreign"), "AdapterMismatchError", "foreign"),
        (dict(prompt="the " * 508, adapter="pt"), "GenerationError", "context of 512"),
        (dict(temperature=-0.5), "GenerationError", "temperature"),
        (dict(temperature=float("nan")), "GenerationError", "temperature"),
        (dict(top_p=0.0), "GenerationError", "top_p"),
        (dict(top_k=-1), "GenerationError", "top_k"),
        (dict(max_new_tokens=0), "GenerationError", "max_new_tokens"),
        (dict(stop="abc"), "GenerationError", "stop"),
        (dict(traffic="staging"), "GenerationError", "traffic"),
        (dict(prompt=[]), "GenerationError", "prompt"),
        (dict(prompt=""), "GenerationError", "empty"),
    ],
)
def test_bad_request_fails_alone(base64, tmp_path, bad, error_type, needle):
    from trace_ptune.adapters.store import AdapterStore

    store = AdapterStore(tmp_path / "store")
    foreign = make_adapter(base64, semconv.METHOD_PROMPT_TUNING, 2, seed=9)
    foreign.base_fingerprint = "sha256:" + "1" * 64
    store.save(foreign, "foreign")
    engine = Engine(base64, store=store)
    pt = make_adapter(base64, semconv.METHOD_PROMPT_TUNING, 5, seed=1, name="pt")
    engine.register(pt)
    args = {"prompt": GOOD, "max_new_tokens": 4, **bad}
    results = engine.generate(
        [
            GenerationRequest(GOOD, adapter="pt", max_new_tokens=4),
            GenerationRequest(**args),
            GenerationRequest("the cat", max_new_tokens=3),
        ]
    )
    assert results[1].error is not None and needle in results[1].error
    assert results[1].error_type == error_type
    assert results[1].finish_reason == "error" and results[1].token_ids == []
    assert results[0].error is None and results[2].error is None
    assert results[0].token_ids == reference_greedy(base64, pt, engine.encode(GOOD), 4)
    assert results[2].token_ids == reference_greedy(base64, None, engine.encode("the cat"), 3)


def test_prompt_that_just_fits_is_cut_at_the_context(base64):
    engine = Engine(base64, store=object())
    pt = make_adapter(base64, semconv.METHOD_PROMPT_TUNING, 5, seed=1, name="pt")
    engine.register(pt)
    prompt = "the " * 504
    used = len(engine.encode(prompt)) + 5
    assert 505 <= used <= 511
    result = engine.generate([GenerationRequest(prompt, adapter="pt", max_new_tokens=10)])[0]
    assert result.error is None and result.finish_reason == "length"
    # every generated token but the last is fed back at positions used..511
    assert result.output_tokens == 512 - used + 1


def test_all_requests_bad_returns_all_errors(base64):
    engine = Engine(base64, store=object())
    results = engine.generate([GenerationRequest(GOOD, top_p=2.0), GenerationRequest(GOOD, adapter="x")])
    assert [r.finish_reason for r in results] == ["error", "error"]
