"""The training loop: learning, frozen base, reproducibility, resume, failures, leakage."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from trace_ptune import semconv
from trace_ptune.adapters.store import AdapterStore
from trace_ptune.errors import LeakageError, TrainingError
from trace_ptune.tuning import TrainConfig, train

from .conftest import toy_rows, write_jsonl


def _cfg(train_path: Path, **kw) -> TrainConfig:
    base = {
        "model": "tiny-random",
        "data": str(train_path),
        "name": "toy",
        "virtual_tokens": 6,
        "quiet": True,
    }
    base.update(kw)
    return TrainConfig(**base)


def test_loss_decreases_and_the_base_stays_frozen(tiny, toy_data) -> None:
    train_path, eval_path = toy_data
    before = {k: v.detach().clone() for k, v in tiny.model.state_dict().items()}
    result = train(
        _cfg(
            train_path,
            eval=str(eval_path),
            method=semconv.METHOD_PREFIX_TUNING,
            steps=30,
            lr=0.3,
            eval_every=10,
            eval_at_start=True,
        ),
        tiny,
    )
    history = result.metrics["loss_history"]
    assert sum(history[-5:]) / 5 < history[0] - 0.5
    # Held-out: the trained prefix beats its own initialisation on the eval set.
    assert result.metrics["eval_loss"] < result.metrics["init_eval_loss"] - 0.5
    assert result.metrics["eval_exact_match"] > result.metrics["init_eval_exact_match"]
    for name, param in tiny.model.named_parameters():
        assert not param.requires_grad and param.grad is None, name
    after = tiny.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    # The adapter landed in the store under name@1 with the run's identity.
    stored = AdapterStore().resolve("toy@1")
    assert stored.hash == result.adapter_hash
    assert stored.base_fingerprint == tiny.fingerprint and stored.method == semconv.METHOD_PREFIX_TUNING
    assert stored.prefix_kv is not None and stored.prefix_kv.shape[3] == 6


def test_same_seed_and_data_give_the_same_adapter_hash(tiny, toy_data) -> None:
    train_path, _ = toy_data
    a = train(_cfg(train_path, steps=4, seed=3, init="vocab"), tiny)
    b = train(_cfg(train_path, steps=4, seed=3, init="vocab", name="toy2"), tiny)
    c = train(_cfg(train_path, steps=4, seed=4, init="vocab", name="toy3"), tiny)
    assert a.adapter_hash == b.adapter_hash != c.adapter_hash


def test_gradient_accumulation_equals_one_big_batch(tiny64, toy_data) -> None:
    train_path, _ = toy_data
    big = train(_cfg(train_path, steps=3, batch_size=8, dtype="float64", name="big"), tiny64)
    acc = train(_cfg(train_path, steps=3, batch_size=4, grad_accum=2, dtype="float64", name="acc"), tiny64)
    assert torch.allclose(big.soft_prompt.embeddings, acc.soft_prompt.embeddings, atol=1e-10)


def test_p_tuning_saves_encoder_state_and_its_output(tiny, toy_data) -> None:
    train_path, _ = toy_data
    result = train(_cfg(train_path, method=semconv.METHOD_P_TUNING, encoder="lstm", steps=3), tiny)
    sp = AdapterStore().resolve(result.adapter_hash)
    assert sp.encoder_state and any(k.startswith("lstm.") for k in sp.encoder_state)
    assert sp.encoder_config["type"] == "lstm"
    assert sp.embeddings is not None and sp.embeddings.shape == (6, tiny.model.config.hidden_size)


@pytest.mark.parametrize("method", [semconv.METHOD_P_TUNING, semconv.METHOD_PREFIX_TUNING])
def test_resume_gives_the_uninterrupted_result(tiny64, toy_data, tmp_path, method) -> None:
    train_path, eval_path = toy_data
    kw = {
        "steps": 6,
        "lr": 0.05,
        "warmup_steps": 2,
        "schedule": "cosine",
        "weight_decay": 0.01,
        "dtype": "float64",
        "method": method,
        "eval": str(eval_path),
        "eval_every": 2,
        "leakage": "refuse",
    }
    full = train(_cfg(train_path, checkpoint_every=3, output_dir=str(tmp_path / "full"), **kw), tiny64)
    ckpt = tmp_path / "full" / "checkpoints" / "step-000003"
    assert (ckpt / "state.json").is_file() and (ckpt / "optimizer.safetensors").is_file()
    assert not list(ckpt.glob("*.pt")) and not list(ckpt.glob("*.bin"))  # no pickle
    resumed = train(TrainConfig(resume=str(ckpt), quiet=True, output_dir=None), tiny64)
    assert resumed.run_id == full.run_id
    assert resumed.metrics["loss_history"] == pytest.approx(full.metrics["loss_history"], abs=1e-12)
    assert resumed.adapter_hash == full.adapter_hash


def test_nan_loss_stops_the_run_keeps_last_good_state_and_marks_the_span(
    tiny, toy_data, tmp_path, spans
) -> None:
    train_path, _ = toy_data
    with pytest.raises(TrainingError, match=r"NaN/inf at step \d+ with lr=1e\+30"):
        train(
            _cfg(
                train_path,
                method=semconv.METHOD_P_TUNING,
                steps=10,
                lr=1e30,
                max_grad_norm=None,
                output_dir=str(tmp_path / "run"),
            ),
            tiny,
        )
    last_good = tmp_path / "run" / "checkpoints" / "last-good"
    from safetensors.torch import load_file

    tensors = load_file(str(last_good / "trainable.safetensors"))
    assert all(torch.isfinite(t).all() for t in tensors.values())
    run = [s for s in spans.get_finished_spans() if s.name == semconv.SPAN_TRAIN]
    assert len(run) == 1 and run[0].status.status_code.name == "ERROR"
    assert any(e.name == "exception" for e in run[0].events)
    assert AdapterStore().list() == []  # nothing non-finite went into the store


def test_overlapping_eval_is_refused_or_dropped(tiny, tmp_path) -> None:
    rows = toy_rows(12)
    train_path = write_jsonl(tmp_path / "t.jsonl", rows)
    eval_path = write_jsonl(tmp_path / "e.jsonl", [rows[0], rows[5], *toy_rows(2, start=70)])
    with pytest.raises(LeakageError, match="2 of 4 eval examples"):
        train(_cfg(train_path, eval=str(eval_path), steps=1), tiny)
    result = train(_cfg(train_path, eval=str(eval_path), steps=1, leakage="drop"), tiny)
    assert result.metrics["leaked_dropped"] == 2 and result.metrics["examples"] == 10


def test_continuing_from_an_adapter_records_it_as_parent(tiny, toy_data) -> None:
    train_path, _ = toy_data
    first = train(_cfg(train_path, steps=2), tiny)
    second = train(_cfg(train_path, steps=2, parent="toy@1", name="toy-next"), tiny)
    assert second.soft_prompt.parent_hash == first.adapter_hash
    assert AdapterStore().resolve("toy-next@1").parent_hash == first.adapter_hash


def test_early_stopping_and_extra_scorers(tiny, toy_data, spans) -> None:
    train_path, eval_path = toy_data
    cfg = _cfg(
        train_path, eval=str(eval_path), steps=10, lr=1e-6, eval_every=1, patience=2, best_metric="exact_match",
        scorers=["f1"],
    )  # fmt: skip
    result = train(cfg, tiny)
    # exact match cannot improve at this learning rate: best at the first eval, then two more evals.
    assert (
        result.metrics["steps"] == 3 and result.metrics["stopped_early"] and result.metrics["best_step"] == 1
    )
    assert "eval_f1" in result.metrics
    names = {
        e.attributes[semconv.GEN_AI_EVALUATION_NAME]
        for s in spans.get_finished_spans()
        if s.name == semconv.SPAN_EVAL
        for e in s.events
    }
    assert names == {"loss", "exact_match", "f1"}
