"""Mixed-adapter serving: trace-ptune's engine vs correct serial serving vs PEFT ``generate()``.

Side by side in one process, per base model: a batch of ``--batch`` rows, each a prompt of
exactly ``--prompt-len`` random tokens, ``--virtual`` virtual tokens per soft prompt, ``K``
distinct prompt-tuning adapters (row i uses adapter i mod K), greedy, ``--new`` new tokens
(end-of-sequence is ignored on every side, so every row decodes the same number of tokens).

- ours: ``Engine.generate`` over all rows in one mixed batch (prompt-KV cache warm);
- correct serial: one adapter group at a time through ``model.generate(inputs_embeds=cat(soft
  prompt, embed(ids)))``: what a correct PEFT-style stack does;
- PEFT as shipped: ``PeftModel.generate`` with ``set_adapter`` per group (one adapter per batch).
- correctness: rows whose tokens equal a no-cache reference (a full forward of
  ``cat(soft prompt, tokens)`` at each step, float32), compared up to the reference's first
  end-of-sequence token.
- the base model alone (no soft prompt): our engine and ``model.generate``;
- time to first token with vs without the prompt-KV cache at n = 20 / 100 virtual tokens;
- tracing on (SDK provider, batch span processor, spans dropped at export) vs off.

    python bench/bench_runtime.py                                   # both models, every section
    python bench/bench_runtime.py --models tiny-random --reps 5
    python bench/bench_runtime.py --models smollm2-135m --reps 1 --peft-ks 1,8,32
    python bench/bench_runtime.py --models smollm2-135m --overheads-only --ks 8 --rounds 8

Prints a JSON summary (``--out FILE`` too) and a short table on stderr.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from trace_ptune import semconv  # noqa: E402
from trace_ptune.adapters.artifact import SoftPrompt  # noqa: E402
from trace_ptune.models import load_model  # noqa: E402
from trace_ptune.models.attention import kv_layout  # noqa: E402
from trace_ptune.runtime import Engine, GenerationRequest  # noqa: E402
from trace_ptune.runtime.batching import prefill  # noqa: E402


class _NoStore:
    """Every adapter is registered up front; nothing resolves from disk."""

    def resolve(self, ref: str) -> Any:
        raise LookupError(ref)


# CPU time of the whole process (all threads) by default: on a shared, oversubscribed machine
# wall time mostly measures the neighbours. ``--clock wall`` for an idle machine.
CLOCK = time.process_time


def _median(fn: Any, reps: int) -> tuple[float, Any]:
    times, out = [], None
    for _ in range(reps):
        t0 = CLOCK()
        out = fn()
        times.append(CLOCK() - t0)
    return statistics.median(times), out


def _adapters(base: Any, count: int, n: int, seed: int) -> list[SoftPrompt]:
    g = torch.Generator().manual_seed(seed)
    std = float(base.model.get_input_embeddings().weight.std())
    out = []
    for i in range(count):
        emb = torch.randn(n, base.hidden_size, generator=g) * std
        out.append(
            SoftPrompt(
                method=semconv.METHOD_PROMPT_TUNING,
                num_virtual_tokens=n,
                token_dim=base.hidden_size,
                embeddings=emb.to(base.dtype),
                name=f"bench-{n}-{i}",
                base_fingerprint=base.fingerprint,
            )
        )
    return out


def _prompts(base: Any, batch: int, length: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    special = set(base.tokenizer.all_special_ids)
    low = max(special) + 1 if max(special) < 1000 else 10
    ids = torch.randint(low, base.vocab_size, (batch, length), generator=g)
    return ids


# ---------------------------------------------------------------- the three serving paths


def ours(engine: Engine, prompts: torch.Tensor, refs: list[str | None], new: int) -> list[list[int]]:
    requests = [
        GenerationRequest(prompts[i].tolist(), adapter=refs[i], max_new_tokens=new) for i in range(len(refs))
    ]
    results = engine.generate(requests)
    assert all(r.error is None for r in results), [r.error for r in results if r.error]
    return [r.token_ids for r in results]


def _groups(row_adapters: list[SoftPrompt | None]) -> dict[int, list[int]]:
    groups: dict[int, list[int]] = {}
    for i, sp in enumerate(row_adapters):
        groups.setdefault(id(sp), []).append(i)
    return groups


@torch.inference_mode()
def correct_serial(
    base: Any, prompts: torch.Tensor, row_adapters: list[SoftPrompt], new: int
) -> list[list[int]]:
    """One adapter group at a time: generate(inputs_embeds=cat(soft prompt, embed(ids)))."""
    model, out = base.model, [None] * len(row_adapters)
    embed = model.get_input_embeddings()
    for rows in _groups(row_adapters).values():
        sp = row_adapters[rows[0]]
        ids = prompts[rows]
        soft = sp.embeddings.to(base.dtype).unsqueeze(0).expand(len(rows), -1, -1)
        embeds = torch.cat((soft, embed(ids)), dim=1)
        gen = model.generate(
            inputs_embeds=embeds,
            attention_mask=torch.ones(embeds.shape[:2], dtype=torch.long),
            max_new_tokens=new,
            min_new_tokens=new,
            do_sample=False,
            pad_token_id=base.tokenizer.pad_token_id,
        )
        for j, row in enumerate(rows):
            out[row] = gen[j, -new:].tolist()
    return out  # type: ignore[return-value]


@torch.inference_mode()
def base_generate(base: Any, prompts: torch.Tensor, new: int) -> list[list[int]]:
    gen = base.model.generate(
        input_ids=prompts,
        attention_mask=torch.ones_like(prompts),
        max_new_tokens=new,
        min_new_tokens=new,
        do_sample=False,
        pad_token_id=base.tokenizer.pad_token_id,
    )
    return gen[:, -new:].tolist()


def build_peft(spec: str, dtype: torch.dtype, adapters: list[SoftPrompt]) -> Any:
    """A PeftModel over a separate copy of the base, one prompt-tuning adapter per soft prompt."""
    from peft import PromptTuningConfig, TaskType, get_peft_model

    copy = load_model(spec, dtype=dtype)
    cfg = PromptTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=adapters[0].num_virtual_tokens)
    peft_model = get_peft_model(copy.model, cfg, adapter_name="a0")
    for i in range(1, len(adapters)):
        peft_model.add_adapter(f"a{i}", cfg)
    for i, sp in enumerate(adapters):
        peft_model.prompt_encoder[f"a{i}"].embedding.weight.data.copy_(sp.embeddings)
    peft_model.eval()
    return peft_model


@torch.inference_mode()
def peft_generate(
    peft_model: Any,
    pad_id: int,
    prompts: torch.Tensor,
    row_adapters: list[SoftPrompt],
    index: dict[int, int],
    new: int,
) -> list[list[int]]:
    """PEFT as shipped: one active adapter per batch, its own generate()."""
    out = [None] * len(row_adapters)
    for rows in _groups(row_adapters).values():
        peft_model.set_adapter(f"a{index[id(row_adapters[rows[0]])]}")
        ids = prompts[rows]
        gen = peft_model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=new,
            min_new_tokens=new,
            do_sample=False,
            pad_token_id=pad_id,
        )
        for j, row in enumerate(rows):
            out[row] = gen[j, -new:].tolist()
    return out  # type: ignore[return-value]


@torch.inference_mode()
def reference(
    base: Any, prompts: torch.Tensor, row_adapters: list[SoftPrompt | None], new: int
) -> list[list[int]]:
    """No-cache greedy reference: a full forward of cat(soft prompt, tokens) at every step.

    Every row has the same prompt and soft-prompt length, so the rows batch without padding.
    """
    model = base.model
    embed = model.get_input_embeddings()
    soft = torch.stack([sp.embeddings.to(base.dtype) for sp in row_adapters])
    tokens = prompts.clone()
    for _ in range(new):
        logits = model(inputs_embeds=torch.cat((soft, embed(tokens)), dim=1)).logits[:, -1]
        tokens = torch.cat((tokens, logits.argmax(-1, keepdim=True)), dim=1)
    return tokens[:, prompts.shape[1] :].tolist()


def count_correct(outputs: list[list[int]], expected: list[list[int]], eos: frozenset[int]) -> int:
    good = 0
    for got, want in zip(outputs, expected, strict=True):
        cut = next((i for i, t in enumerate(want) if t in eos), len(want))
        good += got[:cut] == want[:cut]
    return good


# ---------------------------------------------------------------- TTFT and tracing


@torch.inference_mode()
def full_prefill_first_token(base: Any, prompts: torch.Tensor, sp: SoftPrompt) -> torch.Tensor:
    """Without the prompt-KV cache: every row prefills its n virtual tokens plus its prompt."""
    embed = base.model.get_input_embeddings()
    soft = sp.embeddings.to(base.dtype).unsqueeze(0).expand(prompts.shape[0], -1, -1)
    embeds = torch.cat((soft, embed(prompts)), dim=1)
    return base.model(inputs_embeds=embeds, logits_to_keep=1).logits[:, -1].argmax(-1)


def _prefill_after_cache(base: Any, prompts: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
    """With the prompt-KV cache: every row prefills only its prompt after the cached prefix."""
    ids = prompts.tolist()
    layout = kv_layout(base.model)
    _, logits = prefill(base.model, [kv] * len(ids), ids, layout=layout, pad_token_id=0)
    return logits.argmax(-1)


class _DropExporter:
    """Accepts spans and throws them away: measures span creation, not I/O."""

    def export(self, spans: Any) -> Any:
        from opentelemetry.sdk.trace.export import SpanExportResult

        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


def _traced_provider() -> Any:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(_DropExporter()))
    return provider


# ---------------------------------------------------------------- one model


def interleaved_vs_base(
    engine: Engine, prompts: torch.Tensor, pool: list[SoftPrompt], args: argparse.Namespace, rounds: int
) -> dict[Any, list[float]]:
    """Seconds per call of the base model alone (key None) and of each K, interleaved (base, K=1,
    base, K=4, ...) so both sides share the machine's drift: measured one after the other, the
    later runs of a process come out faster."""
    paired: dict[Any, list[float]] = {k: [] for k in [None, *args.ks]}
    for _ in range(rounds):
        for k in paired:
            refs = [None] * args.batch if k is None else [pool[i % k].hash for i in range(args.batch)]
            t0 = CLOCK()
            ours(engine, prompts, refs, args.new)
            paired[k].append(CLOCK() - t0)
    return paired


def tracing_on_off(
    base: Any, prompts: torch.Tensor, pool: list[SoftPrompt], args: argparse.Namespace, rounds: int
) -> dict[str, Any]:
    """Our engine with an SDK tracer provider vs a no-op provider, interleaved, K=8."""
    k = 8 if 8 in args.ks else args.ks[-1]
    refs = [pool[i % k].hash for i in range(args.batch)]
    traced = Engine(base, store=_NoStore(), memory_budget_mb=None, tracer_provider=_traced_provider())
    traced.eos_token_ids = frozenset()
    untraced = Engine(base, store=_NoStore(), memory_budget_mb=None, tracer_provider=_noop_provider())
    untraced.eos_token_ids = frozenset()
    for e in (traced, untraced):
        for sp in pool[:k]:
            e.register(sp)
    on, off = [], []
    for _ in range(rounds):
        for e, bucket in ((untraced, off), (traced, on)):
            t0 = CLOCK()
            ours(e, prompts, refs, args.new)
            bucket.append(CLOCK() - t0)
    tracing = {
        "k": k,
        "off_s": statistics.median(off),
        "on_s": statistics.median(on),
        "overhead": statistics.median(on) / statistics.median(off) - 1,
        "spans_per_call": args.batch + 1,
        "off_runs_s": off,
        "on_runs_s": on,
    }
    log(
        f"tracing (K={k}): off {tracing['off_s']:.3f}s, on {tracing['on_s']:.3f}s, overhead {tracing['overhead']:+.1%}"
    )
    return tracing


def bench_overheads(spec: str, args: argparse.Namespace) -> dict[str, Any]:
    """Only the two overhead comparisons (soft prompts vs the base model alone, tracing on vs
    off), with ``--rounds`` interleaved rounds each: for a larger model, where the full sweep
    takes too long to repeat."""
    base = load_model(spec, dtype=torch.float32)
    torch.manual_seed(0)
    prompts = _prompts(base, args.batch, args.prompt_len, seed=1)
    pool = _adapters(base, max(args.ks), args.virtual, seed=2)
    engine = Engine(base, store=_NoStore(), memory_budget_mb=None, max_batch_size=max(64, args.batch))
    engine.eos_token_ids = frozenset()
    for sp in pool:
        engine.register(sp)
    ours(engine, prompts[:2], [pool[0].hash, None], 2)  # warm-up
    rounds = args.rounds or 5
    log(f"\n== {spec}: overheads only, {rounds} interleaved rounds")
    paired = interleaved_vs_base(engine, prompts, pool, args, rounds)
    t_base = statistics.median(paired[None])
    by_k = [
        {
            "k": k,
            "ours_interleaved_s": statistics.median(paired[k]),
            "throughput_vs_base_ours": t_base / statistics.median(paired[k]),
            "runs_s": paired[k],
        }
        for k in args.ks
    ]
    log(
        f"base alone {t_base:.3f}s; with K adapters vs base: "
        + ", ".join(f"K={r['k']} {r['throughput_vs_base_ours']:.3f}x" for r in by_k)
    )
    tracing = tracing_on_off(base, prompts, pool, args, rounds)
    return {
        "model": spec,
        "rounds": rounds,
        "base": {"ours_base_interleaved_s": t_base, "runs_s": paired[None]},
        "by_k": by_k,
        "tracing": tracing,
    }


def bench_model(spec: str, args: argparse.Namespace) -> dict[str, Any]:
    reps = args.reps if args.reps else (5 if spec == "tiny-random" else 1)
    base = load_model(spec, dtype=torch.float32)
    torch.manual_seed(0)
    prompts = _prompts(base, args.batch, args.prompt_len, seed=1)
    pool = _adapters(base, max(args.ks), args.virtual, seed=2)
    eos = frozenset(
        {base.tokenizer.eos_token_id} | set(_as_list(base.model.generation_config.eos_token_id))
    ) - {None}
    engine = Engine(base, store=_NoStore(), memory_budget_mb=None, max_batch_size=max(64, args.batch))
    engine.eos_token_ids = frozenset()  # decode --new tokens on every side
    for sp in pool:
        engine.register(sp)
    index = {id(sp): i for i, sp in enumerate(pool)}
    peft_model = build_peft(spec, base.dtype, pool) if args.peft_ks else None

    log(
        f"\n== {spec}: batch {args.batch}, prompt {args.prompt_len}, n={args.virtual}, new {args.new}, reps {reps}"
    )
    ours(engine, prompts[:2], [pool[0].hash, None], 2)  # warm-up
    rows_out = []
    for k in args.ks:
        row_adapters = [pool[i % k] for i in range(args.batch)]
        refs = [sp.hash for sp in row_adapters]
        t_ours, out_ours = _median(lambda refs=refs: ours(engine, prompts, refs, args.new), reps)
        t_serial, out_serial = _median(
            lambda ra=row_adapters: correct_serial(base, prompts, ra, args.new), max(1, reps // 2)
        )
        expected = reference(base, prompts, row_adapters, args.new)
        row = {
            "k": k,
            "ours_s": t_ours,
            "serial_s": t_serial,
            "speedup_vs_serial": t_serial / t_ours,
            "ours_correct": count_correct(out_ours, expected, eos),
            "serial_correct": count_correct(out_serial, expected, eos),
            "ours_tokens_per_s": args.batch * args.new / t_ours,
        }
        if peft_model is not None and k in args.peft_ks:
            t_peft, out_peft = _median(
                lambda ra=row_adapters: peft_generate(
                    peft_model, base.tokenizer.pad_token_id, prompts, ra, index, args.new
                ),
                1,
            )
            row.update(
                peft_s=t_peft,
                speedup_vs_peft=t_peft / t_ours,
                peft_correct=count_correct(out_peft, expected, eos),
            )
        rows_out.append(row)
        log(
            f"K={k:>2}: ours {t_ours:7.2f}s ({row['ours_correct']}/{args.batch} correct) | serial {t_serial:7.2f}s "
            f"({row['serial_correct']}/{args.batch}) x{row['speedup_vs_serial']:.1f}"
            + (
                f" | PEFT {row['peft_s']:7.2f}s ({row['peft_correct']}/{args.batch}) x{row['speedup_vs_peft']:.1f}"
                if "peft_s" in row
                else ""
            )
        )

    # the base model alone
    t_base_ours, _ = _median(lambda: ours(engine, prompts, [None] * args.batch, args.new), reps)
    t_base_hf, _ = _median(lambda: base_generate(base, prompts, args.new), reps)
    base_row = {"ours_base_s": t_base_ours, "hf_generate_base_s": t_base_hf}
    paired = interleaved_vs_base(engine, prompts, pool, args, args.rounds or max(5, reps * 2))
    t_base_paired = statistics.median(paired[None])
    base_row["ours_base_interleaved_s"] = t_base_paired
    for row in rows_out:
        t_k = statistics.median(paired[row["k"]])
        row["ours_interleaved_s"] = t_k
        row["throughput_vs_base_ours"] = t_base_paired / t_k
        row["throughput_vs_base_hf"] = t_base_hf / row["ours_s"]
    log(
        f"base alone: ours {t_base_ours:.2f}s, HF generate {t_base_hf:.2f}s; ours with K adapters vs base (ours): "
        + ", ".join(f"K={r['k']} {r['throughput_vs_base_ours']:.2f}x" for r in rows_out)
    )

    # time to first token: prompt-KV cache vs a full prefill of n + L tokens
    ttft = []
    for n in (20, 100):
        sp = _adapters(base, 1, n, seed=10 + n)[0]
        engine.register(sp)
        refs = [sp.hash] * args.batch
        cached, _ = _median(lambda refs=refs: ours(engine, prompts, refs, 1), reps + 2)
        full, _ = _median(lambda sp=sp: full_prefill_first_token(base, prompts, sp), reps + 2)
        # the forward passes alone: prompt after the cached prefix vs n + L tokens
        kv = engine.registry.prefix_kv(engine.registry.resolve(sp.hash))
        prefill_cached, _ = _median(lambda kv=kv: _prefill_after_cache(base, prompts, kv), reps + 2)
        cold = []
        for _ in range(max(1, reps)):
            engine.registry.kv_cache.clear()
            t0 = CLOCK()
            ours(engine, prompts, refs, 1)
            cold.append(CLOCK() - t0)
        share = n / (n + args.prompt_len)
        ttft.append(
            {
                "n": n,
                "ttft_cached_s": cached,
                "ttft_full_prefill_s": full,
                "prefill_forward_cached_s": prefill_cached,
                "prefill_saved_share": 1 - prefill_cached / full,
                "ttft_first_request_s": statistics.median(cold),
                "saved_share": 1 - cached / full,
                "prefill_share_n_over_n_plus_L": share,
            }
        )
        log(
            f"TTFT n={n:>3}: cached {cached * 1e3:7.1f} ms, full prefill {full * 1e3:7.1f} ms "
            f"(saved {1 - cached / full:.0%}; forward alone {prefill_cached * 1e3:.1f} ms, saved "
            f"{1 - prefill_cached / full:.0%}; n/(n+L) = {share:.0%}); first request, cache cold "
            f"{statistics.median(cold) * 1e3:.1f} ms"
        )

    tracing = tracing_on_off(base, prompts, pool, args, args.rounds or max(3, reps * 2))
    return {"model": spec, "reps": reps, "by_k": rows_out, "base": base_row, "ttft": ttft, "tracing": tracing}


def _noop_provider() -> Any:
    from opentelemetry.trace import NoOpTracerProvider

    return NoOpTracerProvider()


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, list | tuple) else [value]


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="tiny-random,smollm2-135m")
    parser.add_argument("--ks", default="1,4,8,32")
    parser.add_argument("--peft-ks", default="1,4,8,32", help="K values to run PEFT for ('' to skip PEFT)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--prompt-len", type=int, default=32)
    parser.add_argument("--virtual", type=int, default=20)
    parser.add_argument("--new", type=int, default=16)
    parser.add_argument("--reps", type=int, default=0, help="repetitions (default: 5 tiny-random, 1 others)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's choice)")
    parser.add_argument(
        "--clock", choices=("cpu", "wall"), default="cpu", help="process CPU time or wall time"
    )
    parser.add_argument(
        "--rounds", type=int, default=0, help="interleaved rounds of the overhead comparisons"
    )
    parser.add_argument(
        "--overheads-only",
        action="store_true",
        help="only soft prompts vs the base model and tracing on vs off (no sweep, PEFT or TTFT)",
    )
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    args.ks = [int(k) for k in args.ks.split(",")]
    args.peft_ks = [int(k) for k in args.peft_ks.split(",") if k]
    if args.threads:
        torch.set_num_threads(args.threads)
    global CLOCK
    CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter
    summary = {
        "machine": {
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "clock": args.clock,
        },
        "settings": {k: getattr(args, k) for k in ("batch", "prompt_len", "virtual", "new", "ks", "peft_ks")},
        "models": [
            (bench_overheads if args.overheads_only else bench_model)(spec, args)
            for spec in args.models.split(",")
        ],
    }
    text = json.dumps(summary, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
