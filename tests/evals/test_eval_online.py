"""Online evaluators: deterministic sampling, child evaluation spans, late labels joined by id."""

from __future__ import annotations

from pathlib import Path

import pytest

from trace_ptune import semconv
from trace_ptune.errors import ConfigError, EvalError
from trace_ptune.evals.online import LabelJoiner, OnlineEvaluator, sampled
from trace_ptune.runtime import Engine, GenerationRequest


def test_sampling_is_deterministic_and_close_to_the_rate():
    keys = [f"req-{i}" for i in range(4000)]
    first = [sampled(k, 0.25, seed=3) for k in keys]
    assert first == [sampled(k, 0.25, seed=3) for k in keys]
    assert 0.22 < sum(first) / len(keys) < 0.28
    assert first != [sampled(k, 0.25, seed=4) for k in keys]
    assert not any(sampled(k, 0.0) for k in keys[:100]) and all(sampled(k, 1.0) for k in keys[:100])
    # a higher rate samples a superset: raising the rate never drops what was sampled
    low = {k for k in keys if sampled(k, 0.1, seed=1)}
    assert low <= {k for k in keys if sampled(k, 0.3, seed=1)}


def test_online_evaluator_refuses_scorers_that_need_a_reference():
    with pytest.raises(ConfigError, match="'exact_match' needs an expected answer"):
        OnlineEvaluator("exact_match", sample_rate=0.5)
    with pytest.raises(ConfigError, match="sample_rate"):
        OnlineEvaluator("json_valid", sample_rate=1.5)


def _requests(n: int, **kw) -> list[GenerationRequest]:
    return [
        GenerationRequest(f"hello {i} world", max_new_tokens=3, request_id=f"r{i}", **kw) for i in range(n)
    ]


def test_online_evaluator_emits_child_spans_for_the_sampled_rows(base, spans):
    engine = Engine(base)
    online = OnlineEvaluator("json_valid,contains(text=the, name=has_the)", sample_rate=0.5, seed=11).attach(
        engine
    )
    results = engine.generate(_requests(12, tenant="acme", deployment="acme/support@prod"))
    expected_ids = {f"r{i}" for i in range(12) if sampled(f"r{i}", 0.5, seed=11)}
    assert 0 < len(expected_ids) < 12  # the seed gives a real mix

    finished = spans.get_finished_spans()
    gens = {s.context.span_id: s for s in finished if s.name.startswith("text_completion ")}
    evals = [s for s in finished if s.name.startswith("evaluation ")]
    assert sorted({s.name for s in evals}) == [
        semconv.evaluation_span_name("has_the"),
        semconv.evaluation_span_name("json_valid"),
    ]
    assert len(evals) == 2 * len(expected_ids)
    by_response = {r.response_id: r for r in results}
    scored_requests = set()
    for ev in evals:
        parent = gens[ev.parent.span_id]  # a child of the generation span it scores
        assert ev.context.trace_id == parent.context.trace_id
        a = ev.attributes
        assert a[semconv.GEN_AI_RESPONSE_ID] == parent.attributes[semconv.GEN_AI_RESPONSE_ID]
        assert a[semconv.PTUNE_TENANT] == "acme"
        assert a[semconv.PTUNE_DEPLOYMENT] == "acme/support@prod"
        assert a[semconv.PTUNE_BASE_MODEL_FINGERPRINT] == base.fingerprint
        assert a[semconv.GEN_AI_EVALUATION_NAME] in ("json_valid", "has_the")
        assert a[semconv.GEN_AI_EVALUATION_SCORE_VALUE] in (0.0, 1.0)
        scored_requests.add(by_response[a[semconv.GEN_AI_RESPONSE_ID]].request_id)
    assert scored_requests == expected_ids
    assert (online.seen, online.scored) == (12, len(expected_ids))


def test_online_evaluator_skips_eval_traffic_and_survives_a_broken_scorer(
    base, spans, tmp_path: Path, monkeypatch
):
    (tmp_path / "evals_online_bad.py").write_text(
        "from trace_ptune.evals import scorer\n\n"
        "@scorer(reference_free=True)\n"
        "def explode(output, example):\n    raise RuntimeError('down')\n",
        encoding="utf-8",
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    engine = Engine(base)
    OnlineEvaluator("evals_online_bad:explode,json_valid", sample_rate=1.0).attach(engine)
    results = engine.generate(_requests(2) + _requests(1, traffic=semconv.TRAFFIC_EVAL))
    assert all(r.error is None for r in results)  # the user's call is untouched
    evals = [s for s in spans.get_finished_spans() if s.name.startswith("evaluation ")]
    assert [s.name for s in evals] == [semconv.evaluation_span_name("json_valid")] * 2


def test_label_joiner_scores_late_labels_under_the_ended_span(base, spans):
    engine = Engine(base)
    joiner = LabelJoiner("exact_match,contains(name=mentions)").attach(engine)
    results = engine.generate(_requests(3, tenant="t1"))
    gens = {
        s.attributes[semconv.GEN_AI_RESPONSE_ID]: s
        for s in spans.get_finished_spans()
        if s.name.startswith("text_")
    }
    assert all(g.end_time is not None for g in gens.values())  # ended before any label exists
    spans.clear()

    first = results[0]
    scores = dict(joiner.label(first.response_id, first.text))
    assert scores["exact_match"].value == 1.0 and scores["mentions"].value == 1.0
    joiner.label("r1", "definitely not the output")  # by request id
    thumbs = joiner.feedback(results[2].response_id, "thumbs_up", True, label="up")
    assert thumbs.value == 1.0

    evals = spans.get_finished_spans()
    assert [s.name for s in evals] == [
        "evaluation exact_match", "evaluation mentions", "evaluation exact_match", "evaluation mentions",
        "evaluation thumbs_up",
    ]  # fmt: skip
    for ev, result in zip(evals, [results[0]] * 2 + [results[1]] * 2 + [results[2]], strict=True):
        gen = gens[result.response_id]
        assert ev.parent.span_id == gen.context.span_id and ev.context.trace_id == gen.context.trace_id
        assert ev.attributes[semconv.GEN_AI_RESPONSE_ID] == result.response_id
        assert ev.attributes[semconv.PTUNE_TENANT] == "t1"
    assert evals[2].attributes[semconv.GEN_AI_EVALUATION_SCORE_VALUE] == 0.0
    assert evals[4].attributes[semconv.GEN_AI_EVALUATION_SCORE_LABEL] == "up"


def test_label_joiner_forgets_the_oldest_and_names_unknown_ids(base):
    engine = Engine(base)
    joiner = LabelJoiner("exact_match", max_entries=2).attach(engine)
    results = engine.generate(_requests(3))
    assert len(joiner) == 2
    with pytest.raises(EvalError, match="r0"):
        joiner.label("r0", "x")
    with pytest.raises(EvalError, match=results[0].response_id):
        joiner.label(results[0].response_id, "x")
    assert joiner.label("r2", "x")[0][0] == "exact_match"
    joiner.detach(engine)
    engine.generate(_requests(1))
    assert len(joiner) == 2


def test_label_joiner_can_emit_log_events_instead_of_spans(base, spans):
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor

    exporter = InMemoryLogRecordExporter()
    provider = LoggerProvider()
    provider.add_log_record_processor(SimpleLogRecordProcessor(exporter))
    engine = Engine(base)
    joiner = LabelJoiner("exact_match", encoding="log", logger_provider=provider).attach(engine)
    (result,) = engine.generate(_requests(1, tenant="t9"))
    spans.clear()
    joiner.label(result.response_id, result.text)
    assert not [s for s in spans.get_finished_spans() if s.name.startswith("evaluation ")]
    (log,) = exporter.get_finished_logs()
    record = log.log_record
    assert (
        format(record.span_id, "016x") == result.span_id
        and format(record.trace_id, "032x") == result.trace_id
    )
    assert record.attributes[semconv.GEN_AI_EVALUATION_NAME] == "exact_match"
    assert record.attributes[semconv.GEN_AI_EVALUATION_SCORE_VALUE] == 1.0
    assert record.attributes[semconv.GEN_AI_RESPONSE_ID] == result.response_id
    assert record.attributes[semconv.PTUNE_TENANT] == "t9"
    with pytest.raises(ConfigError, match="encoding"):
        LabelJoiner("exact_match", encoding="carrier-pigeon")
