"""Rows joining and leaving at almost every step (a server's closed loop) still match the
single-request reference: leaving rows are dropped before joiners merge, rows that finish at
their first token leave at once, and the cache tensors are swapped in place."""

from __future__ import annotations

from trace_ptune.runtime import GenerationRequest

from .reference import reference_greedy
from .test_runtime_correctness import PROMPTS, _adapters, _engine


def test_rows_joining_and_leaving_every_step_match_reference(base64):
    adapters = _adapters(base64)
    engine = _engine(base64, adapters, max_batch_size=4)
    names = [None, "pt5", "prefix3", "ptune7", "prefix6", "pt2"]
    requests = [
        GenerationRequest(
            PROMPTS[i % len(PROMPTS)],
            adapter=names[i % len(names)],
            max_new_tokens=1 + (i * 3) % 6,  # 1..6: some rows finish at their first token
            request_id=f"r{i}",
        )
        for i in range(18)
    ]
    waiting = list(requests)
    state = engine.start([waiting.pop(0) for _ in range(3)], stream=False)
    results = {}
    sizes = set()
    for _ in range(200):
        finished = 0
        for event in engine.step(state):
            if event.result is not None:
                results[event.request.request_id] = event.result
                finished += 1
        sizes.add(state.active)
        # a closed loop: every finished row is replaced at once, so joins and leaves coincide
        for _ in range(finished):
            if waiting:
                engine.add(state, [waiting.pop(0)])
        if state.done:
            break
    assert not waiting and len(results) == len(requests)
    assert max(sizes) <= 4
    for request in requests:
        adapter = adapters[request.adapter] if request.adapter else None
        expected = reference_greedy(base64, adapter, engine.encode(request.prompt), request.max_new_tokens)
        assert results[request.request_id].token_ids == expected, request.request_id
