"""`run_eval` and `trace-ptune eval run` on tiny-random: the span tree, scores, results files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from opentelemetry.trace import StatusCode

from trace_ptune import semconv
from trace_ptune.adapters.artifact import SoftPrompt
from trace_ptune.cli.eval import eval_group
from trace_ptune.errors import ConfigError, EvalError
from trace_ptune.evals import stats
from trace_ptune.evals.datasets import load_golden
from trace_ptune.evals.results import read_results
from trace_ptune.evals.runner import run_eval
from trace_ptune.models import BaseModel
from trace_ptune.runtime import Engine

GOLDEN = [
    {"id": "q1", "input": "the cat is", "expected": "good"},
    {"id": "q2", "input": "hello world", "expected": ["hello", "world"]},
    {"id": "q3", "input": "one two three", "expected": "four"},
    {"id": "q4", "input": "red green", "expected": "blue"},
    {"id": "q5", "input": [{"role": "user", "content": "yes or no?"}], "expected": "yes"},
]


def soft_prompt(base: BaseModel, seed: int = 0) -> SoftPrompt:
    g = torch.Generator().manual_seed(seed)
    std = float(base.model.get_input_embeddings().weight.std())
    return SoftPrompt(
        method=semconv.METHOD_PROMPT_TUNING,
        num_virtual_tokens=4,
        token_dim=base.hidden_size,
        embeddings=(torch.randn(4, base.hidden_size, generator=g) * std * 4).to(base.dtype),
        name="evals-test",
        base_model_name=base.name,
        base_fingerprint=base.fingerprint,
    )


def by_name(spans, name):
    return [s for s in spans.get_finished_spans() if s.name == name]


def test_run_eval_records_the_span_tree_and_scores(base, spans, jsonl, tmp_path: Path):
    engine = Engine(base)
    sp = soft_prompt(base)
    data = jsonl("golden.jsonl", GOLDEN)
    run = run_eval(
        data,
        "exact_match,f1,contains(text=the, name=has_the)",
        engine=engine,
        adapter=sp,
        batch_size=2,
        max_new_tokens=4,
        out=tmp_path / "cand.jsonl",
    )
    (eval_span,) = by_name(spans, semconv.SPAN_EVAL)
    attrs = eval_span.attributes
    assert attrs[semconv.PTUNE_EVAL_RUN_ID] == run.run_id
    assert attrs[semconv.PTUNE_EVAL_DATASET_HASH] == load_golden(data).hash == run.dataset_hash
    assert attrs[semconv.PTUNE_ADAPTER_HASH] == sp.hash == run.adapter_hash
    assert attrs[semconv.PTUNE_BASE_MODEL_FINGERPRINT] == base.fingerprint

    gen_spans = [s for s in spans.get_finished_spans() if s.name.startswith(("text_completion ", "chat "))]
    assert len(gen_spans) == 5
    assert sorted(s.name for s in gen_spans).count("chat tiny-random") == 1
    calls = {s.context.span_id: s for s in by_name(spans, semconv.SPAN_GENERATE_CALL)}
    assert len(calls) == 3  # batches of 2, 2, 1
    for s in gen_spans:
        # generation -> ptune.generate (one per batch) -> ptune.eval
        assert calls[s.parent.span_id].parent.span_id == eval_span.context.span_id
        assert s.context.trace_id == eval_span.context.trace_id
        assert s.attributes[semconv.PTUNE_TRAFFIC] == semconv.TRAFFIC_EVAL
        assert s.attributes[semconv.PTUNE_ADAPTER_HASH] == sp.hash
        events = [e for e in s.events if e.name == semconv.EVENT_EVALUATION_RESULT]
        assert [e.attributes[semconv.GEN_AI_EVALUATION_NAME] for e in events] == [
            "exact_match",
            "f1",
            "has_the",
        ]

    # per-example results line up with the span events they came from
    rows = {r.span_id: r for r in read_results(tmp_path / "cand.jsonl")}
    assert len(rows) == 5
    for s in gen_spans:
        row = rows[format(s.context.span_id, "016x")]
        for e in s.events:
            name = e.attributes[semconv.GEN_AI_EVALUATION_NAME]
            assert row.scores[name] == e.attributes[semconv.GEN_AI_EVALUATION_SCORE_VALUE]
        assert row.response_id == s.attributes[semconv.GEN_AI_RESPONSE_ID]
        assert s.attributes[semconv.PTUNE_EVAL_EXAMPLE_ID] == row.id  # the span names its example
        assert s.attributes[semconv.PTUNE_EVAL_RUN_ID] == eval_span.attributes[semconv.PTUNE_EVAL_RUN_ID]
        assert row.output is None  # no content capture, no --save-outputs

    metric_events = {
        e.attributes[semconv.GEN_AI_EVALUATION_NAME]: e.attributes
        for e in eval_span.events
        if e.name == semconv.EVENT_EVAL_METRIC
    }
    assert set(metric_events) == {"exact_match", "f1", "has_the"}
    for name, ev in metric_events.items():
        values = [r.scores[name] for r in run.results]
        assert ev[semconv.PTUNE_EVAL_N] == 5
        assert ev[semconv.PTUNE_EVAL_MEAN] == pytest.approx(sum(values) / 5)
        assert ev[semconv.PTUNE_EVAL_WORST_DECILE] == pytest.approx(stats.worst_decile_mean(values))
        assert run.metrics[name]["mean"] == pytest.approx(ev[semconv.PTUNE_EVAL_MEAN])


def test_baseline_prompt_prefixes_every_input_and_outputs_are_saved(base, spans, jsonl):
    engine = Engine(base, capture_content=True)
    run = run_eval(
        jsonl("golden.jsonl", GOLDEN[:2]),
        ["exact_match"],
        engine=engine,
        baseline_prompt="answer yes or no: ",
        max_new_tokens=3,
    )
    gen_spans = [s for s in spans.get_finished_spans() if s.name.startswith("text_completion ")]
    assert len(gen_spans) == 2
    for s in gen_spans:
        assert "answer yes or no: " in s.attributes[semconv.GEN_AI_INPUT_MESSAGES]
        assert semconv.PTUNE_ADAPTER_HASH not in s.attributes
    assert run.adapter_hash is None
    assert all(r.output is not None and r.input is not None for r in run.results)
    (eval_span,) = by_name(spans, semconv.SPAN_EVAL)
    assert semconv.PTUNE_ADAPTER_HASH not in eval_span.attributes


def test_refused_generation_scores_zero_with_error_label(base, spans, jsonl):
    long_input = "the " * (base.model.config.max_position_embeddings + 10)
    run = run_eval(
        jsonl("g.jsonl", [{"id": "long", "input": long_input, "expected": "x"}, GOLDEN[0]]),
        "contains(text=a)",
        engine=Engine(base),
        max_new_tokens=2,
    )
    bad = run.results[0]
    assert bad.error and bad.scores == {"contains": 0.0} and bad.labels == {"contains": "error"}
    assert run.errors == 1


def test_adapter_and_baseline_prompt_together_are_refused(base, jsonl):
    with pytest.raises(ConfigError, match="not both"):
        run_eval(
            jsonl("g.jsonl", GOLDEN), "exact_match", engine=Engine(base), adapter="x", baseline_prompt="y"
        )


def test_a_failing_scorer_fails_the_eval_and_marks_its_span(base, spans, jsonl, tmp_path, monkeypatch):
    (tmp_path / "evals_bad_scorer.py").write_text(
        "def boom(output, example):\n    raise ValueError('no judge')\n", encoding="utf-8"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(EvalError, match="'boom' failed on example 'q1'"):
        run_eval(jsonl("g.jsonl", GOLDEN[:1]), "evals_bad_scorer:boom", engine=Engine(base), max_new_tokens=2)
    (eval_span,) = by_name(spans, semconv.SPAN_EVAL)
    assert eval_span.status.status_code == StatusCode.ERROR


def test_cli_eval_run_then_compare(base, model_cache, spans, jsonl, tmp_path: Path, monkeypatch):
    monkeypatch.setenv("TRACE_PTUNE_MODEL_CACHE", str(model_cache))  # reuse the converted preset
    data = jsonl("golden.jsonl", GOLDEN)
    runner = CliRunner()
    outs = []
    from trace_ptune.adapters.store import AdapterStore

    saved = AdapterStore().save(soft_prompt(base, seed=3), "evals-cli")
    for name, extra in (("base", ["--baseline-prompt", "yes "]), ("cand", ["--adapter", "evals-cli@1"])):
        out = tmp_path / f"{name}.jsonl"
        res = runner.invoke(
            eval_group,
            ["run", "--model", "tiny-random", "--data", str(data), "--scorer", "exact_match,f1",
             "--scorer", "rouge_l", "--max-new-tokens", "3", "--limit", "4", "--out", str(out),
             "--save-outputs", "--json", *extra],
        )  # fmt: skip
        assert res.exit_code == 0, res.output
        rows = json.loads(res.stdout)
        assert [r["metric"] for r in rows] == ["exact_match", "f1", "rouge_l"]
        assert all(r["n"] == 4 for r in rows)
        results = read_results(out)
        assert len(results) == 4 and results[0].output is not None
        assert results[0].adapter_hash == (saved.hash if name == "cand" else None)
        outs.append(str(out))
    res = runner.invoke(eval_group, ["compare", *outs, "--json"])
    assert res.exit_code in (0, 1)
    verdict = json.loads(res.stdout)
    assert verdict["passed"] is (res.exit_code == 0)
    assert verdict["metrics"][0]["n"] == 4


def test_cli_eval_run_bad_scorer_is_one_sentence(jsonl):
    res = CliRunner().invoke(
        eval_group,
        ["run", "--model", "tiny-random", "--data", str(jsonl("g.jsonl", GOLDEN)), "--scorer", "bleu"],
    )
    assert res.exit_code == 1 and "unknown scorer 'bleu'" in res.output and "Traceback" not in res.output
