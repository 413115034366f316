"""Single-request, no-cache references every row of a batch must match.

- prompt tuning / P-tuning: a full forward of ``cat(soft prompt, embed(tokens))`` at each step;
- prefix tuning: a full recompute of the text after a fresh cache holding the prefix K/V at each
  step (positions after the prefix, as PEFT runs it);
- base model: a full forward of the tokens at each step.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import DynamicCache

from trace_ptune import semconv


@torch.inference_mode()
def reference_logits(base: Any, adapter: Any | None, ids: list[int]) -> torch.Tensor:
    """Logits (V,) of the next token after ``ids``, with no incremental cache."""
    model = base.model
    tokens = torch.tensor([ids])
    if adapter is None:
        return model(input_ids=tokens).logits[0, -1]
    if adapter.method == semconv.METHOD_PREFIX_TUNING:
        kv = adapter.prefix_kv.to(base.dtype)
        cache = DynamicCache([(kv[i, 0][None], kv[i, 1][None]) for i in range(kv.shape[0])])
        return model(input_ids=tokens, cache=cache, use_cache=True).logits[0, -1]
    embeds = torch.cat((adapter.embeddings.to(base.dtype), model.get_input_embeddings()(tokens)[0]))
    return model(inputs_embeds=embeds[None]).logits[0, -1]


def reference_greedy(base: Any, adapter: Any | None, ids: list[int], steps: int) -> list[int]:
    out: list[int] = []
    for _ in range(steps):
        out.append(int(reference_logits(base, adapter, ids + out).argmax()))
    return out


def assert_rows_match_reference(
    base: Any, adapters: dict[str, Any], plan: list[tuple[str | None, str, int]]
) -> list[Any]:
    """Run ``plan`` ((adapter name or None, prompt, max_new_tokens) per row) as one mixed batch on
    a fresh engine holding ``adapters``; assert every row equals its greedy no-cache reference up
    to the reference's first end-of-sequence token. Returns the results."""
    from trace_ptune.runtime import Engine, GenerationRequest

    engine = Engine(base, store=object())
    for sp in adapters.values():
        engine.register(sp)
    results = engine.generate([GenerationRequest(p, adapter=a, max_new_tokens=k) for a, p, k in plan])
    eos = base.tokenizer.eos_token_id
    for (name, prompt, k), result in zip(plan, results, strict=True):
        expected = reference_greedy(base, adapters[name] if name else None, engine.encode(prompt), k)
        expected = expected[: expected.index(eos) + 1] if eos in expected else expected
        assert result.error is None
        assert result.token_ids == expected, (name, prompt)
    return results
