"""Multi-tenant training equals separate runs; tenants do not couple."""

from __future__ import annotations

import torch

from trace_ptune import semconv
from trace_ptune.adapters.store import AdapterStore
from trace_ptune.tuning import TrainConfig, train, train_multitenant
from trace_ptune.tuning.data import load_jsonl
from trace_ptune.tuning.multitenant import tenant_plan

from .conftest import toy_rows, write_jsonl


def _flip(rows):
    flipped = {" positive": " negative", " negative": " positive"}
    return [{**r, "target": flipped[r["target"]]} for r in rows]


def test_multitenant_run_equals_separate_runs(tiny64, tmp_path) -> None:
    a = toy_rows(10, tenant="acme")
    b = _flip(toy_rows(10, start=200, tenant="globex"))
    mixed = [row for pair in zip(a, b, strict=True) for row in pair]  # a0 b0 a1 b1 ...
    mixed_path = write_jsonl(tmp_path / "mixed.jsonl", mixed)
    # Steps of two micro-batches; step 2 has no globex row, so globex must not move there
    # (its weight decay and momentum would otherwise move it).
    plan = [
        [[0, 1, 2, 5], [3, 4]],
        [[6, 8], [10, 12, 14]],
        [[7, 9, 11, 16], [13, 15]],
        [[17, 18, 19]],
    ]
    common = {
        "model": "tiny-random",
        "virtual_tokens": 4,
        "dtype": "float64",
        "batch_size": 4,
        "grad_accum": 2,
        "lr": 0.05,
        "weight_decay": 0.1,
        "max_grad_norm": 0.05,
        "warmup_steps": 1,
        "quiet": True,
        "init": "labels",
    }
    multi = train_multitenant(TrainConfig(data=str(mixed_path), name="mt", **common), tiny64, batches=plan)
    assert set(multi.soft_prompts) == {"acme", "globex"}
    rows = load_jsonl(mixed_path)
    for tenant, own in (("acme", a), ("globex", b)):
        path = write_jsonl(tmp_path / f"{tenant}.jsonl", own)
        alone = train(
            TrainConfig(data=str(path), name=f"solo-{tenant}", **common),
            tiny64,
            batches=tenant_plan(plan, rows, tenant),
        )
        got = multi.soft_prompts[tenant].embeddings
        assert torch.allclose(got, alone.soft_prompt.embeddings, atol=1e-9), tenant
        assert multi.soft_prompts[tenant].name == f"mt/{tenant}"
        assert AdapterStore().resolve(f"mt/{tenant}@1").hash == alone.adapter_hash
    assert multi.soft_prompts["acme"].hash != multi.soft_prompts["globex"].hash


def test_multitenant_prefix_tuning_gives_each_tenant_an_adapter(tiny, tmp_path, spans) -> None:
    rows = toy_rows(8, tenant="acme") + _flip(toy_rows(8, start=50, tenant="globex"))
    path = write_jsonl(tmp_path / "m.jsonl", rows)
    evals = write_jsonl(
        tmp_path / "e.jsonl", toy_rows(2, start=300, tenant="acme") + toy_rows(2, start=400, tenant="globex")
    )
    result = train_multitenant(
        TrainConfig(
            model="tiny-random",
            data=str(path),
            eval=str(evals),
            name="mtp",
            method=semconv.METHOD_PREFIX_TUNING,
            virtual_tokens=3,
            steps=3,
            quiet=True,
        ),
        tiny,
    )
    assert {sp.name for sp in result.soft_prompts.values()} == {"mtp/acme", "mtp/globex"}
    evals_spans = [s for s in spans.get_finished_spans() if s.name == semconv.SPAN_EVAL]
    assert {s.attributes[semconv.PTUNE_TENANT] for s in evals_spans} == {"acme", "globex"}
    (run,) = [s for s in spans.get_finished_spans() if s.name == semconv.SPAN_TRAIN]
    assert semconv.PTUNE_ADAPTER_HASH not in run.attributes
    ckpts = {
        s.attributes[semconv.PTUNE_TENANT]: s.attributes[semconv.PTUNE_ADAPTER_HASH]
        for s in spans.get_finished_spans()
        if s.name == semconv.SPAN_CHECKPOINT
    }
    assert ckpts == {t: sp.hash for t, sp in result.soft_prompts.items()}
