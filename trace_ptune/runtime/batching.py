"""Tensor bookkeeping of a mixed batch: per-row K/V prefixes, left padding, masks, positions.

A batch's cache holds, for every row, ``[pad | prefix K/V | pad | prompt | generated]``:
the prefix region is left-padded to the longest prefix in the batch, the prompt region to the
longest prompt. The attention mask is 0 on every pad, so a row only ever sees its own virtual
tokens and text. Positions come from the row itself, not from the cache length: virtual tokens
sit at 0..n-1 (their cached keys already carry that rotation) and text continues at n, n+1...
for every method (prompt tuning, P-tuning, and prefix tuning as PEFT positions it, after the
prefix). The base model alone is a row with n = 0.

Rows join a running batch by prefilling on their own and being concatenated in (the shorter
cache is left-padded), and leave it by index selection; columns that are padding for every
remaining row are trimmed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from transformers import DynamicCache


@dataclass
class KVBatch:
    """The tensors of the rows decoding together.

    cache: per layer (B, kv_heads, T, head_dim); mask: (B, T) long; positions: (B,) position of
    the next token; last_tokens: (B,) the tokens chosen last, fed at the next decode step.
    """

    cache: DynamicCache
    mask: torch.Tensor
    positions: torch.Tensor
    last_tokens: torch.Tensor

    @property
    def size(self) -> int:
        return int(self.mask.shape[0])

    @property
    def length(self) -> int:
        return int(self.mask.shape[1])


def _layers(cache: DynamicCache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(layer.keys, layer.values) for layer in cache.layers if layer.keys is not None]


def _cache(layers: list[tuple[torch.Tensor, torch.Tensor]]) -> DynamicCache:
    return DynamicCache(layers) if layers else DynamicCache()


def _reuse(cache: DynamicCache, layers: list[tuple[torch.Tensor, torch.Tensor]]) -> DynamicCache:
    """``cache`` holding ``layers`` instead of its tensors; the caller gives up the old ones.

    ``DynamicCache(layers)`` copies every tensor once more (it concatenates them onto empty
    ones); swapping the tensors of the existing layers costs nothing.
    """
    used = [layer for layer in cache.layers if layer.keys is not None]
    if len(used) != len(layers) or not layers:
        return _cache(layers)
    for layer, (keys, values) in zip(used, layers, strict=True):
        layer.keys, layer.values = keys, values
    return cache


def build_prefix_cache(
    prefixes: list[torch.Tensor | None],
    *,
    layout: tuple[int, int, int],
    dtype: torch.dtype,
    device: torch.device,
) -> tuple[DynamicCache, torch.Tensor]:
    """A cache holding each row's prefix, left-padded to the longest; and its (B, P) mask.

    ``prefixes[i]`` is ``[layers, 2, kv_heads, n_i, head_dim]`` or None (no soft prompt).
    """
    num_layers, kv_heads, head_dim = layout
    batch = len(prefixes)
    longest = max((p.shape[3] for p in prefixes if p is not None), default=0)
    mask = torch.zeros(batch, longest, dtype=torch.long, device=device)
    if longest == 0:
        return DynamicCache(), mask
    if all(p is not None and p.shape[3] == longest for p in prefixes):
        # no padding needed (e.g. every row on one adapter): one stack, no per-row copies
        stacked = torch.stack(prefixes, dim=2).to(dtype)  # type: ignore[arg-type]
        mask.fill_(1)
    else:
        # (layers, 2, B, kv_heads, P, head_dim), zero on padding
        stacked = torch.zeros(num_layers, 2, batch, kv_heads, longest, head_dim, dtype=dtype, device=device)
        for row, prefix in enumerate(prefixes):
            if prefix is None:
                continue
            n = prefix.shape[3]
            stacked[:, :, row, :, longest - n :, :] = prefix
            mask[row, longest - n :] = 1
    return _cache([(stacked[i, 0], stacked[i, 1]) for i in range(num_layers)]), mask


@torch.inference_mode()
def prefill(
    model: Any,
    prefixes: list[torch.Tensor | None],
    prompts: list[list[int]],
    *,
    layout: tuple[int, int, int],
    pad_token_id: int,
) -> tuple[KVBatch, torch.Tensor]:
    """Run the prompts after their prefixes; returns the batch and the last logits (B, V)."""
    param = next(model.parameters())
    device, dtype = param.device, param.dtype
    cache, prefix_mask = build_prefix_cache(prefixes, layout=layout, dtype=dtype, device=device)
    batch, longest = len(prompts), max(len(p) for p in prompts)
    ids = torch.full((batch, longest), pad_token_id, dtype=torch.long, device=device)
    prompt_mask = torch.zeros(batch, longest, dtype=torch.long, device=device)
    for row, prompt in enumerate(prompts):
        ids[row, longest - len(prompt) :] = torch.tensor(prompt, dtype=torch.long, device=device)
        prompt_mask[row, longest - len(prompt) :] = 1
    virtual = prefix_mask.sum(dim=1)  # (B,) n_i
    # text position = n_i + index among the row's real prompt tokens; pads get 0 (never attended)
    positions = (virtual[:, None] + prompt_mask.cumsum(dim=1) - 1).clamp(min=0) * prompt_mask
    mask = torch.cat((prefix_mask, prompt_mask), dim=1)
    out = model(
        input_ids=ids,
        attention_mask=mask,
        position_ids=positions,
        cache=cache,
        use_cache=True,
        logits_to_keep=1,
    )
    lengths = torch.tensor([len(p) for p in prompts], dtype=torch.long, device=device)
    state = KVBatch(
        cache=out.cache,
        mask=mask,
        positions=virtual + lengths,
        last_tokens=ids[:, -1].clone(),
    )
    return state, out.logits[:, -1, :]


@torch.inference_mode()
def decode(model: Any, state: KVBatch) -> torch.Tensor:
    """Feed ``state.last_tokens`` (one per row); returns the next logits (B, V).

    The caller sets ``state.last_tokens`` to the tokens it picks from them.
    """
    ones = torch.ones(state.size, 1, dtype=state.mask.dtype, device=state.mask.device)
    state.mask = torch.cat((state.mask, ones), dim=1)
    out = model(
        input_ids=state.last_tokens[:, None],
        attention_mask=state.mask,
        position_ids=state.positions[:, None],
        cache=state.cache,
        use_cache=True,
    )
    state.cache = out.cache
    state.positions = state.positions + 1
    return out.logits[:, -1, :]


def select_rows(state: KVBatch, keep: list[int]) -> KVBatch:
    """The batch restricted to rows ``keep``, with all-padding leading columns trimmed.

    ``state`` must not be used afterwards: its cache object is reused."""
    index = torch.tensor(keep, dtype=torch.long, device=state.mask.device)
    mask = state.mask.index_select(0, index)
    start = _first_used_column(mask)
    layers = [
        (k.index_select(0, index)[:, :, start:], v.index_select(0, index)[:, :, start:])
        for k, v in _layers(state.cache)
    ]
    return KVBatch(
        cache=_reuse(state.cache, layers),
        mask=mask[:, start:],
        positions=state.positions.index_select(0, index),
        last_tokens=state.last_tokens.index_select(0, index),
    )


def merge(a: KVBatch, b: KVBatch) -> KVBatch:
    """Rows of ``a`` then rows of ``b`` in one batch; the shorter cache is left-padded.

    ``a`` and ``b`` must not be used afterwards: ``a``'s cache object is reused."""
    length = max(a.length, b.length)
    layers_a, layers_b = _layers(a.cache), _layers(b.cache)
    layers = []
    for (ka, va), (kb, vb) in zip(layers_a, layers_b, strict=True):
        layers.append(
            (
                torch.cat((_left_pad(ka, length), _left_pad(kb, length)), dim=0),
                torch.cat((_left_pad(va, length), _left_pad(vb, length)), dim=0),
            )
        )
    return KVBatch(
        cache=_reuse(a.cache, layers),
        mask=torch.cat((_left_pad(a.mask, length), _left_pad(b.mask, length)), dim=0),
        positions=torch.cat((a.positions, b.positions)),
        last_tokens=torch.cat((a.last_tokens, b.last_tokens)),
    )


def _left_pad(t: torch.Tensor, length: int) -> torch.Tensor:
    """Pad dim 2 of a (B, H, T, D) cache tensor, or dim 1 of a (B, T) mask, on the left."""
    dim = 2 if t.dim() == 4 else 1
    missing = length - t.shape[dim]
    if missing == 0:
        return t
    shape = list(t.shape)
    shape[dim] = missing
    return torch.cat((t.new_zeros(shape), t), dim=dim)


def _first_used_column(mask: torch.Tensor) -> int:
    used = mask.any(dim=0).nonzero()
    return int(used[0]) if used.numel() else mask.shape[1]
