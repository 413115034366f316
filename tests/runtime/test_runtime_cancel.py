"""Cancelling rows of a running batch: they stop at once, the others are untouched."""

from __future__ import annotations

from trace_ptune import semconv
from trace_ptune.runtime import Engine, GenerationRequest
from trace_ptune.runtime.requests import FINISH_CANCELLED


def test_cancelled_rows_leave_the_batch_and_the_others_finish_unchanged(base64, spans):
    engine = Engine(base64)
    keep = GenerationRequest("the cat sat on the mat", max_new_tokens=12)
    drop = GenerationRequest("once upon a time", max_new_tokens=12)
    waiting = GenerationRequest("never admitted", max_new_tokens=12)
    (expected,) = engine.generate([keep])

    state = engine.start([keep, drop], stream=False)
    events = engine.step(state) + engine.step(state) + engine.step(state)  # prefill + 2 decodes
    drop_id = events[1].seq_id
    (waiting_id,) = engine.add(state, [waiting])
    cancelled = engine.cancel(state, [drop_id, waiting_id, 10_000])  # an unknown id is ignored
    assert [e.seq_id for e in cancelled] == [drop_id, waiting_id]
    results = {e.seq_id: e.result for e in cancelled}
    assert results[drop_id].finish_reason == FINISH_CANCELLED
    assert results[drop_id].output_tokens == 3 and results[drop_id].error is None
    assert results[waiting_id].output_tokens == 0
    assert state.active == 1 and not state.pending

    while not state.done:
        events += engine.step(state)
    finished = [e.result for e in events if e.result is not None]
    assert len(finished) == 1 and finished[0].text == expected.text
    assert engine.cancel(state, [drop_id]) == []  # already ended: nothing happens

    reasons = [
        s.attributes[semconv.GEN_AI_RESPONSE_FINISH_REASONS]
        for s in spans.get_finished_spans()
        if s.name.startswith("text_completion")
    ]
    assert reasons.count((FINISH_CANCELLED,)) == 2
