"""HF Trainer: the contract's span tree from the Trainer's own events, with the adapter hash."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from trace_ptune import semconv
from trace_ptune.instrumentation import peft_hash

from .conftest import by_name, make_peft


class _Rows(torch.utils.data.Dataset):
    def __init__(self, base: Any, n: int) -> None:
        enc = base.tokenizer([f"row {i} says hello" for i in range(n)], padding="max_length", max_length=8)
        self.rows = [
            {"input_ids": ids, "attention_mask": mask, "labels": ids}
            for ids, mask in zip(enc["input_ids"], enc["attention_mask"], strict=True)
        ]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {k: torch.tensor(v) for k, v in self.rows[i].items()}


def _trainer(base: Any, model: Any, tmp_path: Any, **overrides: Any) -> Any:
    from transformers import Trainer, TrainingArguments

    settings = dict(
        output_dir=str(tmp_path / "out"),
        max_steps=4,
        per_device_train_batch_size=2,
        per_device_eval_batch_size=4,
        learning_rate=0.1,
        logging_steps=1,
        eval_strategy="steps",
        eval_steps=2,
        save_strategy="steps",
        save_steps=2,
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    settings.update(overrides)
    return Trainer(
        model=model,
        args=TrainingArguments(**settings),
        train_dataset=_Rows(base, 8),
        eval_dataset=_Rows(base, 4),
    )


def test_trainer_run_produces_the_contract_span_tree(base, instrumented, tmp_path):
    model = make_peft(base, "prompt")
    initial = peft_hash.adapter_identity(model).hash
    trainer = _trainer(base, model, tmp_path)
    trainer.train()

    train = next(s for s in by_name(instrumented, semconv.SPAN_TRAIN) if s.name == semconv.SPAN_TRAIN)
    steps = by_name(instrumented, semconv.SPAN_TRAIN_STEP)
    evals = by_name(instrumented, semconv.SPAN_EVAL)
    checkpoints = by_name(instrumented, semconv.SPAN_CHECKPOINT)
    final = peft_hash.adapter_identity(model).hash

    run_id = train.attributes[semconv.PTUNE_TRAIN_RUN_ID]
    assert train.parent is None
    assert train.attributes[semconv.PTUNE_ADAPTER_METHOD] == semconv.METHOD_PROMPT_TUNING
    assert train.attributes[semconv.PTUNE_ADAPTER_HASH] == final != initial
    assert train.attributes[semconv.train_hparam("learning_rate")] == pytest.approx(0.1)
    assert train.attributes[semconv.PTUNE_BASE_MODEL_FINGERPRINT] == base.fingerprint

    assert [s.attributes[semconv.PTUNE_TRAIN_STEP] for s in steps] == [1, 2, 3, 4]
    for step in steps:
        assert step.parent.span_id == train.context.span_id
        assert step.attributes[semconv.PTUNE_TRAIN_RUN_ID] == run_id
        assert step.attributes[semconv.PTUNE_TRAIN_LOSS] > 0
        assert semconv.PTUNE_TRAIN_LEARNING_RATE in step.attributes

    assert len(evals) == 2
    for ev in evals:
        assert ev.parent.span_id == train.context.span_id
        metrics = {e.attributes[semconv.GEN_AI_EVALUATION_NAME]: e for e in ev.events}
        assert "loss" in metrics and metrics["loss"].attributes[semconv.PTUNE_EVAL_N] == 4
        assert "runtime" not in metrics
        assert ev.attributes[semconv.PTUNE_ADAPTER_HASH].startswith("sha256:")

    assert [c.attributes[semconv.PTUNE_TRAIN_STEP] for c in checkpoints] == [2, 4]
    assert checkpoints[-1].attributes[semconv.PTUNE_ADAPTER_HASH] == final
    assert (
        checkpoints[-1].attributes[semconv.PTUNE_ADAPTER_PARENT_HASH]
        == checkpoints[0].attributes[semconv.PTUNE_ADAPTER_HASH]
    )
    # the saved checkpoint really has the tensors the span names
    from trace_ptune.adapters.peft_interop import import_peft

    assert import_peft(tmp_path / "out" / "checkpoint-4", base=base).hash == final


def test_a_failing_run_ends_the_train_span_with_an_error(base, instrumented, tmp_path):
    from transformers import TrainerCallback

    boom = ValueError("data went bad")

    class Explode(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if state.global_step == 2:
                raise boom

    trainer = _trainer(base, make_peft(base, "prompt"), tmp_path, eval_strategy="no", save_strategy="no")
    trainer.add_callback(Explode())
    with pytest.raises(ValueError) as caught:
        trainer.train()
    assert caught.value is boom
    [train] = [s for s in instrumented.get_finished_spans() if s.name == semconv.SPAN_TRAIN]
    assert train.status.status_code.name == "ERROR"
    # the context is restored: a new span after the failure is a root span
    from trace_ptune.telemetry import get_tracer

    with get_tracer().start_as_current_span("after") as after:
        pass
    assert after.parent is None


def test_callback_by_hand_is_not_added_twice(base, instrumented, tmp_path):
    from transformers import Trainer, TrainingArguments

    from trace_ptune.instrumentation.trainer import TracePtuneCallback

    args = TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True, max_steps=1)
    trainer = Trainer(
        model=make_peft(base), args=args, train_dataset=_Rows(base, 2), callbacks=[TracePtuneCallback()]
    )
    ours = [cb for cb in trainer.callback_handler.callbacks if isinstance(cb, TracePtuneCallback)]
    assert len(ours) == 1
