"""Quickstart: train a soft prompt, gate it, deploy it and serve it, from Python, traced end to end.

    trace-ptune collector run &                  # optional: otherwise spans are not exported
    python examples/quickstart.py                # tiny-random: seconds
    python examples/quickstart.py --model smollm2-135m --steps 40

It trains a review-sentiment soft prompt on the bundled demo data, measures it against the base
model with a plain instruction (the gate), promotes it to ``sentiment@prod`` and serves a few
requests through that deployment. Every step is a span carrying the adapter hash, so
``trace-ptune query adapters`` and ``trace-ptune query lineage sentiment`` show it afterwards.
The adapter goes into the store under ``TRACE_PTUNE_HOME`` (a temporary one unless you set it).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

os.environ.setdefault("TRACE_PTUNE_HOME", tempfile.mkdtemp(prefix="trace-ptune-quickstart-"))

import trace_ptune
from trace_ptune.adapters.store import AdapterStore
from trace_ptune.demo.datasets import load_split, split_path
from trace_ptune.demo.scoring import LabelMatch
from trace_ptune.evals import GateConfig, compare_results, run_eval
from trace_ptune.models import load_model
from trace_ptune.runtime import Engine, GenerationRequest
from trace_ptune.tuning import TrainConfig, train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny-random")
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args()

    trace_ptune.configure(
        service_name="quickstart"
    )  # OTLP to OTEL_EXPORTER_OTLP_ENDPOINT or a local collector
    base = load_model(args.model)

    # 1. Train: rows are {"input": ..., "target": ...}; the base model stays frozen.
    result = train(
        TrainConfig(
            model=args.model,
            data=str(split_path("acme", "train")),
            name="sentiment",
            method="prefix_tuning",
            virtual_tokens=2,
            init="vocab",
            lr=0.03,
            schedule="constant",
            steps=args.steps,
            batch_size=16,
        ),
        base,
    )
    print(f"trained {result.name}@{result.version}  {result.adapter_hash}")

    # 2. Gate: the soft prompt against the base model with a plain instruction, same eval rows.
    golden = Path(tempfile.mkdtemp()) / "golden.jsonl"
    golden.write_text(
        "".join(
            json.dumps({"id": r["id"], "input": r["input"], "expected": r["target"].strip()}) + "\n"
            for r in load_split("acme", "eval")
        )
    )
    engine = Engine(base)
    answer_tokens = 1 if args.model == "tiny-random" else 2  # a random model: read its first token only
    scorer = [LabelMatch(["positive", "negative"])]  # the label the answer gives (or begins)
    instruction = "Sentiment (positive or negative).\n"
    baseline = run_eval(
        golden, scorer, engine=engine, baseline_prompt=instruction, max_new_tokens=answer_tokens
    )
    candidate = run_eval(
        golden, scorer, engine=engine, adapter=result.adapter_hash, max_new_tokens=answer_tokens
    )
    gate = compare_results(baseline.results, candidate.results, GateConfig())
    print(
        f"gate: {'PASS' if gate.passed else 'FAIL'}  label_accuracy {baseline.metrics['label_accuracy']['mean']:.2f}"
        f" -> {candidate.metrics['label_accuracy']['mean']:.2f}"
    )

    # 3. Deploy and serve: requests name the deployment; the store says which adapter serves it.
    AdapterStore().promote(f"{result.name}@{result.version}", "sentiment@prod", tenant="acme")
    reviews = ["Review: The pasta was superb.\nSentiment:", "Review: What a useless blender.\nSentiment:"]
    for out in engine.generate(
        [
            GenerationRequest(text, deployment="sentiment@prod", tenant="acme", max_new_tokens=4)
            for text in reviews
        ]
    ):
        print(f"{out.model}: {out.text!r}  (trace {out.trace_id})")


if __name__ == "__main__":
    main()
