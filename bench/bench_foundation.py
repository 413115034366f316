"""Foundation benchmarks: base-model loading and the soft-prompt artifact, side by side with anchors.

    python bench/bench_foundation.py [--reps 3]

1. smollm2-135m: ``load_model`` from the converted cache vs transformers reading the GGUF
   (the anchor), and the weight fingerprint computed vs read from the cache.
2. A 20-token prompt-tuning adapter on SmolLM2 (hidden 576): our save + verified load vs PEFT's
   ``save_pretrained`` + ``PeftModel.from_pretrained`` (the anchor).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path


def timed(fn: Callable[[], object], reps: int) -> float:
    samples = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()

    import torch
    from peft import PeftModel, PromptTuningConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from trace_ptune.adapters.artifact import SoftPrompt
    from trace_ptune.models import _gguf, load_model, model_fingerprint

    torch.set_num_threads(1)
    base = load_model("smollm2-135m")  # converts on first use; not timed
    ours_load = timed(lambda: load_model("smollm2-135m"), args.reps)
    gguf = _gguf.smollm2_gguf()
    anchor_load = timed(
        lambda: AutoModelForCausalLM.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
        ),
        1,
    )
    fp = timed(lambda: model_fingerprint(base.model, base.tokenizer), args.reps)

    sp = SoftPrompt("prompt_tuning", 20, 576, embeddings=torch.randn(20, 576))
    with tempfile.TemporaryDirectory() as tmp:
        ours_io = timed(lambda: SoftPrompt.load(sp.save(Path(tmp) / "ours")), args.reps * 5)
        peft_model = get_peft_model(
            base.model, PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=20)
        )

        def peft_io() -> None:
            peft_model.save_pretrained(str(Path(tmp) / "peft"))
            PeftModel.from_pretrained(base.model, str(Path(tmp) / "peft"))

        anchor_io = timed(peft_io, args.reps * 5)

    print("| measurement | trace-ptune | anchor | ratio |")
    print("|---|---|---|---|")
    print(f"| smollm2-135m load (model + tokenizer + fingerprint) vs transformers GGUF load | "
          f"{ours_load:.2f} s | {anchor_load:.2f} s | {anchor_load / ours_load:.1f}x faster |")  # fmt: skip
    print(f"| base fingerprint, computed (all 135M weights) | {fp:.2f} s | (cached on repeat loads) | |")
    print(f"| 20x576 adapter save + verified load vs PEFT save_pretrained + from_pretrained | "
          f"{ours_io * 1000:.1f} ms | {anchor_io * 1000:.1f} ms | {anchor_io / ours_io:.1f}x |")  # fmt: skip


if __name__ == "__main__":
    main()
