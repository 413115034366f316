"""The ``tiny-random`` preset: a small grouped-query Llama that is identical everywhere.

Nothing here depends on a random number generator of torch or numpy, or on transformers'
weight initialisation: every parameter is filled from SHAKE-256 of its own name, so the
weights are the same in every process, on every machine and across library versions.
The tokenizer is a byte-level BPE whose vocabulary and merges are listed below.

Shape: vocab 512, hidden 64, 2 layers, 4 attention heads, 2 key/value heads (head_dim 16),
intermediate 128. Built once into the model cache (under a lock), loaded from there afterwards.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Any

PRESET_NAME = "tiny-random"
# Bump when anything below changes: the cache directory is keyed by it.
TINY_FORMAT = 1

VOCAB_SIZE = 512
SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<|im_start|>", "<|im_end|>")
PAD, BOS, EOS = "<pad>", "<s>", "</s>"

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Words that get their own tokens (with and without a leading space), in priority order.
_WORDS = (
    "the", "and", "you", "is", "of", "to", "in", "it", "that", "this", "was", "not", "yes", "no",
    "good", "bad", "great", "love", "hate", "movie", "film", "positive", "negative", "neutral",
    "hello", "world", "user", "assistant", "system", "answer", "question", "what", "how", "why",
    "for", "with", "are", "be", "on", "at", "by", "an", "or", "as", "so", "if", "do", "my", "me",
    "we", "he", "she", "they", "can", "will", "one", "two", "three", "four", "five", "six", "seven",
    "eight", "nine", "ten", "zero", "red", "green", "blue", "cat", "dog", "sun", "day", "time",
)  # fmt: skip


def _bytes_to_unicode() -> dict[int, str]:
    """The reversible byte -> printable character table of byte-level BPE."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    table: dict[int, str] = {}
    extra = 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def vocabulary() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """The fixed vocabulary (token -> id) and merge list of the tiny tokenizer."""
    vocab: dict[str, int] = {}
    for tok in SPECIAL_TOKENS:
        vocab[tok] = len(vocab)
    byte_chars = _bytes_to_unicode()
    for b in range(256):
        vocab[byte_chars[b]] = len(vocab)
    merges: list[tuple[str, str]] = []
    space = byte_chars[ord(" ")]
    for word in _WORDS:
        for form in (space + word, word):
            current = form[0]
            for ch in form[1:]:
                merged = current + ch
                if merged not in vocab:
                    if len(vocab) >= VOCAB_SIZE:
                        return vocab, merges
                    vocab[merged] = len(vocab)
                    merges.append((current, ch))
                current = merged
    return vocab, merges


def build_tokenizer() -> Any:
    """A ``PreTrainedTokenizerFast`` over the fixed vocabulary (pad left, ChatML-like template)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab, merges = vocabulary()
    backend = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(list(SPECIAL_TOKENS))
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
        padding_side="left",
    )
    tok.chat_template = CHAT_TEMPLATE
    return tok


def build_config() -> Any:
    from transformers import LlamaConfig

    vocab, _ = vocabulary()
    return LlamaConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=512,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        pad_token_id=vocab[PAD],
        bos_token_id=vocab[BOS],
        eos_token_id=vocab[EOS],
        architectures=["LlamaForCausalLM"],
    )


def _fill(name: str, numel: int, std: float) -> Any:
    """``numel`` values uniform in [-std*sqrt(3), std*sqrt(3)) from SHAKE-256 of ``name``."""
    import numpy as np

    raw = hashlib.shake_256(f"trace-ptune/tiny-random/{name}".encode()).digest(4 * numel)
    ints = np.frombuffer(raw, dtype="<u4").astype(np.float64)
    unit = ints / 2.0**32  # [0, 1)
    return ((unit * 2.0 - 1.0) * std * math.sqrt(3.0)).astype(np.float32)


def build_state_dict(model: Any) -> dict[str, Any]:
    """Deterministic weights for every parameter, visited in sorted name order."""
    import torch

    state: dict[str, Any] = {}
    for name, param in sorted(model.state_dict().items()):
        if name.endswith("norm.weight"):
            state[name] = torch.ones(param.shape, dtype=torch.float32)
            continue
        values = _fill(name, param.numel(), 0.02 if "embed" in name or "lm_head" in name else 0.08)
        state[name] = torch.from_numpy(values.copy()).reshape(param.shape)
    return state


def cache_dir(models_dir: Path) -> Path:
    return models_dir / f"{PRESET_NAME}-v{TINY_FORMAT}"


def materialize(target: Path) -> None:
    """Write config, weights and tokenizer into ``target`` (an empty staging directory).

    The model is only instantiated on the meta device (for parameter names and shapes), so
    building the preset never touches torch's global random state.
    """
    import torch
    from safetensors.torch import save_file
    from transformers import LlamaForCausalLM

    config = build_config()
    with torch.device("meta"):
        skeleton = LlamaForCausalLM(config)
    save_file(build_state_dict(skeleton), str(target / "model.safetensors"), metadata={"format": "pt"})
    config.save_pretrained(target)
    build_tokenizer().save_pretrained(target)
