"""An ordinary PEFT prompt-tuning + Hugging Face Trainer script, traced by adding one line.

Everything below is plain transformers / PEFT code; the only trace-ptune lines are
``trace_ptune.configure()`` (OTLP export, optional when ``OTEL_*`` variables are set) and
``trace_ptune.instrument(...)``. The run produces ``ptune.train``, ``ptune.train.step``,
``ptune.eval`` and ``ptune.checkpoint`` spans from the Trainer, and ``text_completion`` spans
from ``generate()`` that carry the soft prompt's content hash (``ptune.adapter.hash``), the same
hash ``trace-ptune adapters import-peft`` gives the saved adapter.

Usage::

    trace-ptune collector run &                       # stores spans in $TRACE_PTUNE_HOME/traces.duckdb
    python examples/peft_trainer_instrumented.py      # ~10 s on the tiny-random model
    trace-ptune query adapters                        # the adapter hash, from training to generation

The base model is the ``tiny-random`` preset (no download); pass ``--model smollm2-135m`` for a
real one. With no collector running, the script runs the same and warns once that nothing is
exported.
"""

from __future__ import annotations

import argparse
import tempfile

import torch
from peft import PromptTuningConfig, PromptTuningInit, TaskType, get_peft_model
from transformers import Trainer, TrainingArguments

import trace_ptune
from trace_ptune.models import load_model

trace_ptune.configure(service_name="peft-trainer-example")
trace_ptune.instrument(deployment="demo/sentiment@dev", tenant="demo")  # the one added line

TRAIN = [
    ("I loved this film", "positive"),
    ("What a waste of time", "negative"),
    ("Brilliant acting and a great story", "positive"),
    ("The plot made no sense", "negative"),
    ("I would watch it again", "positive"),
    ("Boring from start to end", "negative"),
    ("A delight for the whole family", "positive"),
    ("The worst film this year", "negative"),
]
EVAL = [("A great film", "positive"), ("So dull", "negative")]


class SentimentData(torch.utils.data.Dataset):
    """``review -> label`` pairs as causal-LM examples; the loss covers the label tokens only."""

    def __init__(self, tokenizer, rows, max_length: int = 64) -> None:
        self.items = []
        for text, label in rows:
            prompt = tokenizer(f"Review: {text}\nSentiment:")["input_ids"]
            answer = tokenizer(f" {label}", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
            ids = (prompt + answer)[:max_length]
            labels = ([-100] * len(prompt) + answer)[:max_length]
            pad = max_length - len(ids)
            self.items.append(
                {
                    "input_ids": torch.tensor([tokenizer.pad_token_id] * pad + ids),
                    "attention_mask": torch.tensor([0] * pad + [1] * len(ids)),
                    "labels": torch.tensor([-100] * pad + labels),
                }
            )

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return self.items[i]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny-random", help="preset, local directory or hub id")
    parser.add_argument("--steps", type=int, default=12)
    args = parser.parse_args()
    torch.manual_seed(0)

    base = load_model(args.model)
    tokenizer = base.tokenizer
    config = PromptTuningConfig(
        task_type=TaskType.CAUSAL_LM,
        num_virtual_tokens=8,
        prompt_tuning_init=PromptTuningInit.RANDOM,
    )
    model = get_peft_model(base.model, config)
    model.print_trainable_parameters()

    with tempfile.TemporaryDirectory() as out:
        training_args = TrainingArguments(
            output_dir=out,
            max_steps=args.steps,
            per_device_train_batch_size=4,
            learning_rate=0.05,
            logging_steps=1,
            eval_strategy="steps",
            eval_steps=args.steps // 2,
            save_strategy="steps",
            save_steps=args.steps // 2,
            report_to=[],
            use_cpu=True,
            disable_tqdm=True,
        )
        trainer = Trainer(
            model=model,
            args=training_args,
            train_dataset=SentimentData(tokenizer, TRAIN),
            eval_dataset=SentimentData(tokenizer, EVAL),
        )
        trainer.train()
        print("eval:", trainer.evaluate())

    model.eval()
    prompts = [f"Review: {text}\nSentiment:" for text, _ in EVAL]
    inputs = tokenizer(prompts, return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    for prompt, row in zip(prompts, out, strict=True):
        completion = tokenizer.decode(row[inputs["input_ids"].shape[1] :], skip_special_tokens=True)
        print(repr(prompt), "->", repr(completion))


if __name__ == "__main__":
    main()
