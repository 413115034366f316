"""Prompt-tuning step time, peak memory and loss agreement: trace-ptune vs PEFT, side by side.

Both sides get the same frozen base, the same initial prompt tensor (``init=vocab``, same seed),
the same token batches (``batch`` rows of exactly ``seq`` tokens, the last ``target`` tokens of
each row being the target), AdamW with the same learning rate and gradient clipping. Each side
runs in its own subprocess so peak RSS is its own. Reported per side: median step time
(first step excluded), peak RSS of the whole process and of the training phase alone
(``/proc/self/clear_refs`` resets the high-water mark after loading), and the loss of every
step. Then tracing overhead: our run with a real SDK tracer provider (spans recorded, batch
processor) vs the no-op tracer, interleaved, plus the measured cost of one step span.

    python bench/bench_train.py --model tiny-random --steps 30 --repeat 3
    python bench/bench_train.py --model smollm2-135m --steps 6 --repeat 1

Writes a JSON summary to stdout (``--out FILE`` too).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- shared data


def _rows(n: int) -> list[dict[str, str]]:
    """Long inputs (truncated to ``seq`` tokens by the encoder) with short targets."""
    words = ("the", "cat", "sat", "on", "the", "mat", "while", "a", "dog", "ran", "in", "the", "sun", "and")
    rows = []
    for i in range(n):
        text = " ".join(words[(i + j) % len(words)] for j in range(120))
        rows.append(
            {"id": str(i), "input": f"{i} {text}", "target": " yes it is" if i % 2 else " no it is not"}
        )
    return rows


def _setup(args: argparse.Namespace) -> tuple[Any, list[Any], Path]:
    import torch

    torch.set_num_threads(args.threads)
    from trace_ptune.models import load_model
    from trace_ptune.tuning.data import encode_rows

    base = load_model(args.model)
    rows = _rows(args.batch * args.steps)
    data = Path(args.workdir) / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    examples, _ = encode_rows(rows, base.tokenizer, max_length=args.seq)
    assert all(len(e.ids) == args.seq for e in examples), "every row must be exactly --seq tokens"
    return base, examples, data


def _reset_peak() -> None:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def _peaks() -> dict[str, float]:
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(("VmHWM", "VmRSS")):
            key, value = line.split(":")
            out[key] = int(value.split()[0]) / 1024
    import resource

    out["maxrss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


# ---------------------------------------------------------------- the two sides


def _config(args: argparse.Namespace, data: Path, run_dir: str) -> Any:
    from trace_ptune.tuning import TrainConfig

    return TrainConfig(
        model=args.model, data=str(data), name="bench", virtual_tokens=args.virtual_tokens, init="vocab",
        seed=args.seed, lr=args.lr, schedule="constant", max_grad_norm=1.0, batch_size=args.batch,
        max_length=args.seq, steps=args.steps, quiet=True, output_dir=run_dir,
    )  # fmt: skip


def _plan(args: argparse.Namespace) -> list[list[list[int]]]:
    return [[list(range(i * args.batch, (i + 1) * args.batch))] for i in range(args.steps)]


def run_ours(args: argparse.Namespace, base: Any, data: Path, tracer_provider: Any) -> dict[str, Any]:
    from trace_ptune.tuning import train

    run_dir = tempfile.mkdtemp(dir=args.workdir)
    result = train(_config(args, data, run_dir), base, batches=_plan(args), tracer_provider=tracer_provider)
    m = result.metrics
    return {"losses": m["loss_history"], "step_s": m["step_seconds"], "step_cpu_s": m["step_cpu_seconds"]}


class Peft:
    """PEFT prompt tuning on the same base, init tensor and batches."""

    def __init__(self, args: argparse.Namespace, base: Any, examples: list[Any]) -> None:
        import torch
        from peft import PromptTuningConfig, TaskType, get_peft_model

        from trace_ptune.tuning.data import collate
        from trace_ptune.tuning.methods import init_embeddings

        self.args = args
        g = torch.Generator().manual_seed(args.seed)
        self.init = init_embeddings(base.model, base.tokenizer, "vocab", args.virtual_tokens, g)
        self.model = get_peft_model(
            base.model,
            PromptTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=args.virtual_tokens),
        )
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        assert sum(p.numel() for p in self.params) == self.init.numel()
        self.batches = []
        for i in range(args.steps):
            b = collate(examples[i * args.batch : (i + 1) * args.batch], int(base.tokenizer.pad_token_id))
            labels = b["input_ids"].masked_fill(~b["target_mask"], -100)
            self.batches.append((b["input_ids"], b["attention_mask"], labels))

    def run(self) -> dict[str, Any]:
        import torch

        with torch.no_grad():
            self.model.prompt_encoder["default"].embedding.weight.copy_(self.init)
        opt = torch.optim.AdamW(self.params, lr=self.args.lr, weight_decay=0.0)
        losses, times, cpu = [], [], []
        for ids, mask, labels in self.batches:
            t0, c0 = time.perf_counter(), time.process_time()
            out = self.model(input_ids=ids, attention_mask=mask, labels=labels)
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(self.params, 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
            losses.append(float(out.loss))
        return {"losses": losses, "step_s": times, "step_cpu_s": cpu}


# ---------------------------------------------------------------- workers


def worker_timing(args: argparse.Namespace) -> dict[str, Any]:
    """Step times of both sides (and ours traced/untraced), interleaved in one process so the
    shared machine's load hits every side alike."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.trace import NoOpTracerProvider

    base, examples, data = _setup(args)
    traced = TracerProvider()
    traced.add_span_processor(BatchSpanProcessor(InMemorySpanExporter(), max_queue_size=65536))
    untraced = NoOpTracerProvider()
    peft = Peft(args, base, examples)
    out: dict[str, list[Any]] = {"ours": [], "ours_traced": [], "peft": []}
    for _ in range(args.repeat):
        out["ours"].append(run_ours(args, base, data, untraced))
        out["peft"].append(peft.run())
        out["ours_traced"].append(run_ours(args, base, data, traced))
    traced.shutdown()
    return out


def worker_memory(args: argparse.Namespace) -> dict[str, Any]:
    """Peak RSS of one side, alone in its process."""
    from opentelemetry.trace import NoOpTracerProvider

    base, examples, data = _setup(args)
    peft = Peft(args, base, examples) if args.worker == "mem-peft" else None
    import gc

    gc.collect()
    _reset_peak()
    rss_before = _peaks()["VmRSS"]
    if peft is not None:
        peft.run()
    else:
        run_ours(args, base, data, NoOpTracerProvider())
    peaks = _peaks()
    return {
        "rss_before_train_mb": rss_before,
        "train_peak_rss_mb": peaks["VmHWM"],
        "process_peak_rss_mb": peaks["maxrss_mb"],
    }


def span_cost_us(n: int = 2000) -> float:
    """Cost of one step span with its attributes on an SDK provider (batch processor)."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from trace_ptune import semconv
    from trace_ptune.telemetry import get_tracer

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(InMemorySpanExporter(), max_queue_size=65536))
    tracer = get_tracer(provider)
    t0 = time.perf_counter()
    for i in range(n):
        with tracer.start_as_current_span(
            semconv.SPAN_TRAIN_STEP,
            attributes={
                semconv.PTUNE_TRAIN_RUN_ID: "r",
                semconv.PTUNE_TRAIN_RANK: 0,
                semconv.PTUNE_TRAIN_STEP: i,
            },
        ) as span:
            span.set_attributes(
                {
                    semconv.PTUNE_TRAIN_LOSS: 1.0,
                    semconv.PTUNE_TRAIN_LEARNING_RATE: 0.1,
                    semconv.PTUNE_TRAIN_GRAD_NORM: 0.5,
                    semconv.PTUNE_TRAIN_TOKENS: 512,
                    semconv.PTUNE_TRAIN_TOKENS_PER_SECOND: 1e5,
                }
            )
    elapsed = time.perf_counter() - t0
    provider.shutdown()
    return elapsed / n * 1e6


# ---------------------------------------------------------------- driver


def _spawn(kind: str, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--worker", kind, "--model", args.model, "--steps", str(args.steps),
           "--batch", str(args.batch), "--seq", str(args.seq), "--virtual-tokens", str(args.virtual_tokens),
           "--lr", str(args.lr), "--seed", str(args.seed), "--threads", str(args.threads),
           "--repeat", str(args.repeat)]  # fmt: skip
    with tempfile.TemporaryDirectory() as work:
        env = {**os.environ, "TRACE_PTUNE_HOME": os.environ.get("TRACE_PTUNE_HOME", str(Path(work) / "home"))}
        proc = subprocess.run([*cmd, "--workdir", work], capture_output=True, text=True, env=env, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"{kind} worker failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _step_ms(runs: list[dict[str, Any]], key: str = "step_s") -> float:
    """Median step time over every run, each run's first step excluded (warm-up)."""
    times = [t for r in runs for t in (r[key][1:] if len(r[key]) > 1 else r[key])]
    return statistics.median(times) * 1000


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="tiny-random")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=64)
    p.add_argument("--virtual-tokens", type=int, default=20)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    p.add_argument("--repeat", type=int, default=2, help="interleaved timing rounds")
    p.add_argument("--out")
    p.add_argument("--worker", choices=["timing", "mem-ours", "mem-peft"], help=argparse.SUPPRESS)
    p.add_argument("--workdir", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        out = worker_timing(args) if args.worker == "timing" else worker_memory(args)
        print(json.dumps(out))
        return

    timing = _spawn("timing", args)
    mem_ours = _spawn("mem-ours", args)
    mem_peft = _spawn("mem-peft", args)
    ours, peft = timing["ours"][0], timing["peft"][0]
    diffs = [abs(a - b) for a, b in zip(ours["losses"], peft["losses"], strict=True)]
    cost = span_cost_us()
    ours_ms, peft_ms, traced_ms = (
        _step_ms(timing["ours"]),
        _step_ms(timing["peft"]),
        _step_ms(timing["ours_traced"]),
    )
    summary = {
        "model": args.model,
        "steps": args.steps,
        "batch": args.batch,
        "seq": args.seq,
        "virtual_tokens": args.virtual_tokens,
        "threads": args.threads,
        "repeat": args.repeat,
        "peft_step_ms": peft_ms,
        "ours_step_ms": ours_ms,
        "step_time_ratio": ours_ms / peft_ms,
        "peft_step_cpu_ms": _step_ms(timing["peft"], "step_cpu_s"),
        "ours_step_cpu_ms": _step_ms(timing["ours"], "step_cpu_s"),
        "step_cpu_ratio": _step_ms(timing["ours"], "step_cpu_s") / _step_ms(timing["peft"], "step_cpu_s"),
        "peft_process_peak_rss_mb": mem_peft["process_peak_rss_mb"],
        "ours_process_peak_rss_mb": mem_ours["process_peak_rss_mb"],
        "process_peak_rss_ratio": mem_ours["process_peak_rss_mb"] / mem_peft["process_peak_rss_mb"],
        "peft_train_peak_rss_mb": mem_peft["train_peak_rss_mb"],
        "ours_train_peak_rss_mb": mem_ours["train_peak_rss_mb"],
        "train_peak_rss_ratio": mem_ours["train_peak_rss_mb"] / mem_peft["train_peak_rss_mb"],
        "peft_rss_before_train_mb": mem_peft["rss_before_train_mb"],
        "ours_rss_before_train_mb": mem_ours["rss_before_train_mb"],
        "training_memory_ratio": (mem_ours["train_peak_rss_mb"] - mem_ours["rss_before_train_mb"])
        / max(1e-9, mem_peft["train_peak_rss_mb"] - mem_peft["rss_before_train_mb"]),
        "max_loss_diff": max(diffs),
        "losses_ours": ours["losses"],
        "losses_peft": peft["losses"],
        "traced_step_ms": traced_ms,
        "traced_vs_untraced": traced_ms / ours_ms,
        "traced_vs_untraced_cpu": _step_ms(timing["ours_traced"], "step_cpu_s")
        / _step_ms(timing["ours"], "step_cpu_s"),
        "step_span_cost_us": cost,
        "span_overhead_fraction": cost / 1000 / ours_ms,
    }
    text = json.dumps(summary, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
