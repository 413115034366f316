"""Tiny decoders of other architectures, built from a config and saved as model directories."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch


def build_tiny(kind: str, tokenizer: Any, directory: Path, **overrides: Any) -> Path:
    """A 2-layer, 64-wide ``kind`` decoder (random weights, seed 0) with ``tokenizer``, saved."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(
        kind,
        **{
            "vocab_size": 512,
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "max_position_embeddings": 256,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
            **overrides,
        },
    )
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
