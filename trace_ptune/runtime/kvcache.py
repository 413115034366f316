"""The prompt-KV cache: every soft prompt, whatever its method, as a per-layer key/value prefix.

In a causal decoder the virtual tokens sit at positions 0..n-1 and attend only to each other,
so their keys and values do not depend on the user's text. For prompt tuning and P-tuning we
run the base model once over the ``[n, hidden]`` embeddings and keep the per-layer K/V; prefix
tuning stores that K/V already. Either way a row then starts decoding from a cached prefix and
the soft prompt costs no prefill.

Entries are keyed by (adapter hash, base fingerprint), never by name: re-registering a name with
other tensors gives another hash, so a stale prefix can never be served.

Layout of a prefix (the same as ``SoftPrompt.prefix_kv``): ``[layers, 2, kv_heads, n, head_dim]``;
keys already carry their rotary position (0..n-1) and are used as they are.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

import torch
from transformers import DynamicCache

from trace_ptune import semconv


@torch.inference_mode()
def compute_prefix_kv(model: Any, adapter: Any) -> torch.Tensor:
    """The adapter's per-layer K/V ``[layers, 2, kv_heads, n, head_dim]`` in the model's dtype."""
    param = next(model.parameters())
    if adapter.method == semconv.METHOD_PREFIX_TUNING:
        return adapter.prefix_kv.detach().to(device=param.device, dtype=param.dtype).contiguous()
    embeddings = adapter.embeddings.detach().to(device=param.device, dtype=param.dtype)  # (n, H)
    cache = DynamicCache()
    n = embeddings.shape[0]
    out = model(
        inputs_embeds=embeddings.unsqueeze(0),
        position_ids=torch.arange(n, device=param.device).unsqueeze(0),
        cache=cache,
        use_cache=True,
        logits_to_keep=1,  # only K/V matter: skip the vocabulary projection of n positions
    )
    cache = out.cache
    # each layer: keys/values (1, kv_heads, n, head_dim)
    layers = [torch.stack((layer.keys[0], layer.values[0])) for layer in cache.layers]
    return torch.stack(layers).contiguous()


class PromptKVCache:
    """Thread-safe map (adapter hash, base fingerprint) -> prefix K/V, with byte accounting."""

    def __init__(self) -> None:
        self._entries: OrderedDict[tuple[str, str], torch.Tensor] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, adapter_hash: str, fingerprint: str) -> torch.Tensor | None:
        with self._lock:
            kv = self._entries.get((adapter_hash, fingerprint))
            if kv is None:
                self.misses += 1
            else:
                self.hits += 1
            return kv

    def put(self, adapter_hash: str, fingerprint: str, kv: torch.Tensor) -> None:
        with self._lock:
            self._entries[(adapter_hash, fingerprint)] = kv

    def drop(self, adapter_hash: str) -> int:
        """Forget every prefix of one adapter; returns the bytes freed."""
        with self._lock:
            keys = [k for k in self._entries if k[0] == adapter_hash]
            freed = sum(_nbytes(self._entries.pop(k)) for k in keys)
            return freed

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def nbytes(self, adapter_hash: str | None = None) -> int:
        with self._lock:
            return sum(
                _nbytes(kv)
                for (h, _), kv in self._entries.items()
                if adapter_hash is None or h == adapter_hash
            )

    def __contains__(self, key: tuple[str, str]) -> bool:
        with self._lock:
            return key in self._entries

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()
