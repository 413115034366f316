"""The adapter hash: one identity for a soft prompt, from training to production spans.

``sha256:<64 hex>`` of exactly these bytes, concatenated::

    b"trace-ptune/adapter/v1\\n"
    header + b"\\n"
    tensor bytes

``header`` is ASCII ``key=value`` pairs joined by ``;`` in this fixed order (integers in
decimal, no spaces)::

    method=<method>;num_virtual_tokens=<n>;hidden=<hidden>                  # prompt_tuning, p_tuning
    method=prefix_tuning;num_virtual_tokens=<n>;hidden=<hidden>;layers=<L>;kv_heads=<K>;head_dim=<D>

``tensor bytes`` are the *serving* tensor, converted to float32 and written little-endian in
row-major (C) order:

- ``prompt_tuning`` / ``p_tuning``: the ``[n, hidden]`` embeddings prepended to the input
  (for P-tuning, the encoder's output; the encoder itself is training state, not identity);
- ``prefix_tuning``: the ``[L, 2, K, n, D]`` key/value prefix (index 0 of the second axis is the
  key, 1 the value; ``K`` is the number of key/value heads, fewer than attention heads under
  grouped-query attention).

Nothing else enters the hash: no name, version, init, timestamps, base model or PEFT task
type. A bfloat16 tensor and its float32 upcast therefore hash the same, and so does a PEFT
export/import round trip. ``hash12`` is the first 12 hex digits after ``sha256:``.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

from trace_ptune import semconv
from trace_ptune.errors import AdapterFormatError

if TYPE_CHECKING:
    from torch import Tensor

HASH_DOMAIN = b"trace-ptune/adapter/v1\n"


def hash_header(
    method: str,
    *,
    num_virtual_tokens: int,
    hidden: int,
    layers: int | None = None,
    kv_heads: int | None = None,
    head_dim: int | None = None,
) -> bytes:
    """The canonical config header of the hash (see the module docstring)."""
    if method not in semconv.METHODS:
        raise AdapterFormatError(
            f"Unknown soft-prompt method {method!r}; use one of {', '.join(semconv.METHODS)}."
        )
    fields = [("method", method), ("num_virtual_tokens", int(num_virtual_tokens)), ("hidden", int(hidden))]
    if method == semconv.METHOD_PREFIX_TUNING:
        if layers is None or kv_heads is None or head_dim is None:
            raise AdapterFormatError(
                "A prefix-tuning hash needs layers, kv_heads and head_dim; pass all three."
            )
        fields += [("layers", int(layers)), ("kv_heads", int(kv_heads)), ("head_dim", int(head_dim))]
    return ";".join(f"{k}={v}" for k, v in fields).encode("ascii")


def expected_shape(
    method: str,
    *,
    num_virtual_tokens: int,
    hidden: int,
    layers: int | None = None,
    kv_heads: int | None = None,
    head_dim: int | None = None,
) -> tuple[int, ...]:
    """Shape the serving tensor must have for this config."""
    if method == semconv.METHOD_PREFIX_TUNING:
        return (int(layers or 0), 2, int(kv_heads or 0), int(num_virtual_tokens), int(head_dim or 0))
    return (int(num_virtual_tokens), int(hidden))


def tensor_bytes(tensor: Tensor) -> bytes:
    """float32, little-endian, C-order bytes of ``tensor``."""
    import numpy as np
    import torch

    array = tensor.detach().to(device="cpu", dtype=torch.float32).numpy()
    return np.ascontiguousarray(array, dtype="<f4").tobytes()


def adapter_hash(
    method: str,
    serving_tensor: Tensor,
    *,
    num_virtual_tokens: int,
    hidden: int,
    layers: int | None = None,
    kv_heads: int | None = None,
    head_dim: int | None = None,
) -> str:
    """``sha256:<64 hex>`` of a soft prompt's serving tensor and config (layout in the module docstring)."""
    layout = {
        "num_virtual_tokens": num_virtual_tokens,
        "hidden": hidden,
        "layers": layers,
        "kv_heads": kv_heads,
        "head_dim": head_dim,
    }
    header = hash_header(method, **layout)
    shape = expected_shape(method, **layout)
    if tuple(serving_tensor.shape) != shape:
        raise AdapterFormatError(
            f"The {method} tensor has shape {list(serving_tensor.shape)} but its config needs {list(shape)}; "
            "fix the tensor or the config."
        )
    h = hashlib.sha256()
    h.update(HASH_DOMAIN)
    h.update(header + b"\n")
    h.update(tensor_bytes(serving_tensor))
    return "sha256:" + h.hexdigest()


def hash12(full_hash: str) -> str:
    """The first 12 hex digits of a ``sha256:`` hash."""
    return full_hash.removeprefix("sha256:")[:12]
