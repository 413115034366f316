"""A decoder's key/value layout, and attention masks that follow positions.

``kv_layout`` measures what a model's cache really holds per layer instead of trusting config
fields, which some architectures do not use (Falcon's multi-query attention keeps one K/V head
whatever ``num_kv_heads`` says).

A batch that puts a soft prompt before left-padded text holds ``[prompt | pad | text]`` per row.
Causal masks that compare cache columns stay right there (column order is position order), but a
sliding window counted in columns does not: the padding stretches the distance between a row's
text and its soft prompt. Models with sliding-window layers therefore get masks built from
positions; the runtime's decode loop and the trainer's evaluation both use them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

_LAYOUT_ATTR = "_trace_ptune_kv_layout"


@torch.inference_mode()
def kv_layout(model: Any) -> tuple[int, int, int]:
    """(layers, kv_heads, head_dim) of a decoder's cache, measured once by a one-token forward
    and remembered on the model. Raises ``ModelLoadError`` for caches whose layers differ."""
    cached = getattr(model, _LAYOUT_ATTR, None)
    if cached is not None:
        return cached
    from transformers import DynamicCache

    from trace_ptune.errors import ModelLoadError

    param = next(model.parameters())
    ids = torch.zeros((1, 1), dtype=torch.long, device=param.device)
    out = model(input_ids=ids, attention_mask=torch.ones_like(ids), cache=DynamicCache(), use_cache=True)
    cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
    layers = [layer for layer in getattr(cache, "layers", []) if getattr(layer, "keys", None) is not None]
    shapes = {(tuple(layer.keys.shape[1::2]), tuple(layer.values.shape[1::2])) for layer in layers}
    if len(shapes) != 1 or next(iter(shapes))[0] != next(iter(shapes))[1]:
        found = "; ".join(f"keys {k}, values {v}" for k, v in sorted(shapes)) or "no key/value cache"
        raise ModelLoadError(
            f"This model's cache layers do not all hold keys and values of one (kv_heads, head_dim) "
            f"shape ({found}), as latent-attention and hybrid models do; soft prompts are trained and "
            "served on decoders with per-head key/value caches (Llama, Qwen, Mistral, Gemma, Phi...)."
        )
    (kv_heads, head_dim), _ = next(iter(shapes))
    layout = (len(layers), int(kv_heads), int(head_dim))
    try:
        setattr(model, _LAYOUT_ATTR, layout)
    except AttributeError:  # pragma: no cover - a model that refuses attributes: measure again next time
        pass
    return layout


def sliding_window(config: Any) -> int | None:
    """The attention window of a model with sliding-window layers (Mistral, Qwen2 with
    ``use_sliding_window``, Gemma 2/3...), or None when every layer attends to the whole sequence."""
    window = getattr(config, "sliding_window", None)
    if not window:
        return None
    layer_types = getattr(config, "layer_types", None)
    if layer_types is not None:
        return int(window) if "sliding_attention" in layer_types else None
    return None if getattr(config, "use_sliding_window", True) is False else int(window)


MASKED_IMPLEMENTATIONS = ("sdpa", "eager")


def uses_alibi(config: Any) -> bool:
    """ALiBi attention biases (BLOOM, MPT, Falcon with ``alibi=True``)."""
    attn_config = getattr(config, "attn_config", None)
    return bool(
        getattr(config, "model_type", None) == "bloom"
        or getattr(config, "alibi", False)
        or getattr(attn_config, "alibi", False)
        or (isinstance(attn_config, dict) and attn_config.get("alibi"))
    )


def check_alibi(config: Any) -> None:
    """Refuse ALiBi models in one sentence: their biases are built from key columns, which the
    padding inside a row shifts, and padded soft-prompt batches came out wrong."""
    if uses_alibi(config):
        from trace_ptune.errors import ModelLoadError

        raise ModelLoadError(
            f"This {getattr(config, 'model_type', 'model')} model uses ALiBi attention biases, which trace-ptune "
            "does not serve or evaluate in padded soft-prompt batches (rows came out wrong); use a "
            "rotary-position model such as Llama, Qwen, Mistral, Gemma, Phi or Falcon without alibi."
        )


def needs_mask_attention(config: Any) -> bool:
    """A sliding-window model whose attention implementation cannot take 4D masks."""
    impl = getattr(config, "_attn_implementation", None) or "eager"
    return sliding_window(config) is not None and impl not in MASKED_IMPLEMENTATIONS


@contextlib.contextmanager
def masked_attention(model: Any) -> Iterator[None]:
    """SDPA (or eager attention) for the duration, on a sliding-window model whose attention
    cannot take 4D masks (flash attention, fine for right-padded training): padded rows need the
    position-based masks of :func:`attention_mask`. Other models are left as they are."""
    if not needs_mask_attention(model.config):
        yield
        return
    impl = model.config._attn_implementation
    try:
        model.set_attn_implementation("sdpa")
    except (ValueError, ImportError):  # an architecture without SDPA support (Gemma 2)
        model.set_attn_implementation("eager")
    try:
        yield
    finally:
        model.set_attn_implementation(impl)


def check_attention(config: Any) -> None:
    """Refuse what mixed soft-prompt batches cannot serve correctly, in one sentence: ALiBi
    biases and a sliding-window model whose attention cannot take the position-based masks."""
    from trace_ptune.errors import ModelLoadError

    check_alibi(config)
    impl = getattr(config, "_attn_implementation", None) or "eager"
    if needs_mask_attention(config):
        raise ModelLoadError(
            f"This model has sliding-window attention and attn_implementation={impl!r}, which cannot "
            "take the position-based masks mixed soft-prompt batches need; load it with "
            "attn_implementation='sdpa' or 'eager'."
        )


def attention_mask(model: Any, mask: torch.Tensor, query_positions: torch.Tensor) -> Any:
    """The ``attention_mask`` argument for a forward over the last ``Q`` columns of ``mask``.

    ``mask``: (B, T) 1 on real tokens; ``query_positions``: (B, Q) positions of the queries.
    Models without sliding-window layers get ``mask`` itself: their masks count key columns,
    which the padding inside a row (between its prefix and its text) does not disturb. A
    sliding window counted in columns would: keys within the window by position fall outside
    it by column, so those models get 4D masks built from positions (a row's real tokens sit at
    0, 1, 2...), one per layer type where the model mixes full and sliding layers.
    """
    config = model.config
    window = sliding_window(config)
    if window is None:
        return mask
    check_attention(config)
    key_pos = mask.cumsum(dim=1) - 1  # (B, T): position of each real key
    q = query_positions[:, :, None]
    k = key_pos[:, None, :]
    full = mask.bool()[:, None, :] & (k <= q)
    # every query sees at least its own column: a padding query with nothing to attend to would
    # give NaN states, and NaN keys poison the rows that mask them out (0 * NaN)
    t, n = mask.shape[1], query_positions.shape[1]
    own = torch.zeros(n, t, dtype=torch.bool, device=mask.device)
    own[torch.arange(n), torch.arange(t - n, t)] = True
    masks = {"full_attention": full | own, "sliding_attention": (full & (k > q - window)) | own}
    if config._attn_implementation == "eager":  # additive float masks
        dtype = next(model.parameters()).dtype
        low = torch.finfo(dtype).min
        masks = {
            key: torch.zeros(m.shape, dtype=dtype, device=m.device).masked_fill_(~m, low)
            for key, m in masks.items()
        }
    masks = {key: m[:, None] for key, m in masks.items()}  # (B, 1, Q, T)
    if getattr(config, "layer_types", None) is not None:
        return {kind: masks[kind] for kind in set(config.layer_types)}
    return masks["sliding_attention"]
