"""The base-model fingerprint: ``sha256:<hex>`` over what decides a soft prompt's meaning.

Hashed, in this order (each piece framed by its length, so no two inputs collide):

1. ``b"trace-ptune/base-fingerprint/v1"``;
2. canonical JSON (sorted keys, no spaces) of a closed subset of the config: ``model_type``,
   ``vocab_size``, ``hidden_size``, ``intermediate_size``, ``num_hidden_layers``,
   ``num_attention_heads``, ``num_key_value_heads``, ``head_dim``, ``hidden_act``,
   ``max_position_embeddings``, ``rms_norm_eps``, ``rope_parameters`` / ``rope_theta``,
   ``tie_word_embeddings``, ``quantization_config`` (missing fields are ``null``);
3. canonical JSON of the tokenizer's content: the vocabulary as ``[token, id]`` pairs sorted by
   id, the BPE merges (when the tokenizer has them) and the special tokens (not file bytes);
4. for every entry of the model's ``state_dict()`` in sorted name order: the name, the dtype,
   the shape, and the raw tensor bytes.

So two loads of the same files give the same fingerprint, and other weights, another dtype,
another quantization or another tokenizer give another one. Hashing SmolLM2-135M's weights in
float32 takes about 0.3 s; :func:`trace_ptune.models.load_model` caches the result keyed by the
source files' identity (path, size, modification time).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

_CONFIG_FIELDS = (
    "model_type",
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "hidden_act",
    "max_position_embeddings",
    "rms_norm_eps",
    "rope_parameters",
    "rope_theta",
    "tie_word_embeddings",
    "quantization_config",
)


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode("utf-8")


def _frame(h: Any, data: bytes) -> None:
    h.update(len(data).to_bytes(8, "little"))
    h.update(data)


def config_subset(config: Any) -> dict[str, Any]:
    data = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    return {key: data.get(key) for key in _CONFIG_FIELDS}


def tokenizer_content(tokenizer: Any) -> dict[str, Any]:
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda item: (item[1], item[0]))
    merges: list[str] = []
    backend = getattr(tokenizer, "backend_tokenizer", None) or getattr(tokenizer, "_tokenizer", None)
    if backend is not None:
        model = json.loads(backend.to_str()).get("model", {})
        for merge in model.get("merges") or []:
            merges.append(" ".join(merge) if isinstance(merge, list) else str(merge))
    specials = {
        key: str(getattr(tokenizer, key, None))
        for key in ("bos_token", "eos_token", "pad_token", "unk_token")
        if getattr(tokenizer, key, None) is not None
    }
    return {"vocab": vocab, "merges": merges, "special_tokens": specials}


def model_fingerprint(model: Any, tokenizer: Any) -> str:
    """``sha256:<hex>`` of the config subset, the tokenizer content and every weight."""
    import torch

    h = hashlib.sha256()
    _frame(h, b"trace-ptune/base-fingerprint/v1")
    _frame(h, _canonical(config_subset(model.config)))
    _frame(h, _canonical(tokenizer_content(tokenizer)))
    with torch.no_grad():
        for name, tensor in sorted(model.state_dict().items()):
            t = tensor.detach()
            _frame(h, _canonical([name, str(t.dtype).removeprefix("torch."), list(t.shape)]))
            flat = t.to("cpu").contiguous().reshape(-1)
            raw = flat.view(torch.uint8) if flat.numel() else flat
            _frame(h, memoryview(raw.numpy()).cast("B") if raw.numel() else b"")
    return "sha256:" + h.hexdigest()
