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
from transformers.cache_utils import DynamicLayer

from trace_ptune.models.attention import attention_mask


@dataclass
class KVBatch:
    """The tensors of the rows decoding together.

    cache: per layer (B, kv_heads, T, head_dim); mask: (B, T) long; positions: (B,) position of
    the next token; last_tokens: (B,) the tokens chosen last, fed at the next decode step;
    reserve: how many more tokens the rows may still decode (the caller's hint: the cache grows
    into a buffer of that many spare columns instead of being copied at every step).
    """

    cache: DynamicCache
    mask: torch.Tensor
    positions: torch.Tensor
    last_tokens: torch.Tensor
    reserve: int = 0

    @property
    def size(self) -> int:
        return int(self.mask.shape[0])

    @property
    def length(self) -> int:
        return int(self.mask.shape[1])


class _GrowingLayer(DynamicLayer):
    """A cache layer whose keys/values are views into a buffer with spare columns.

    A plain ``DynamicLayer`` concatenates the whole cache with the new token at every step (a
    copy of all keys and values per layer per token); here the new token is written into the
    next spare column and the layer's tensors become a longer view of the same buffer. Views
    handed out before stay valid: columns are only ever written past their end.
    """

    _key_buffer: torch.Tensor | None = None
    _value_buffer: torch.Tensor | None = None

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        kb = self._key_buffer
        if kb is None or not self._owns(self.keys):
            return super().update(key_states, value_states, *args, **kwargs)
        start, new = self.keys.shape[2], key_states.shape[2]
        if start + new > kb.shape[2]:  # out of spare columns: grow by copying once
            self.reserve(new)
            kb = self._key_buffer
        end = start + new
        kb[:, :, start:end] = key_states
        self._value_buffer[:, :, start:end] = value_states  # type: ignore[index]
        self.keys, self.values = kb[:, :, :end], self._value_buffer[:, :, :end]  # type: ignore[index]
        return self.keys, self.values

    def _owns(self, keys: torch.Tensor | None) -> bool:
        kb = self._key_buffer
        return (
            keys is not None
            and kb is not None
            and keys.data_ptr() == kb.data_ptr()
            and keys.shape[:2] == kb.shape[:2]
            and keys.stride() == kb.stride()
        )

    def reserve(self, spare: int, needed: int | None = None) -> None:
        """Make room for ``spare`` more columns without a copy per step; nothing changes while
        ``needed`` (default ``spare``) columns are still free."""
        keys, values = self.keys, self.values
        if keys is None or values is None or keys.dim() != 4:
            return
        length = keys.shape[2]
        room = spare if needed is None else needed
        if self._owns(keys) and self._key_buffer.shape[2] >= length + room:  # type: ignore[union-attr]
            return
        b, h, _, d = keys.shape
        kb = keys.new_empty((b, h, length + spare, d))
        vb = values.new_empty((b, values.shape[1], length + spare, values.shape[3]))
        kb[:, :, :length] = keys
        vb[:, :, :length] = values
        self._key_buffer, self._value_buffer = kb, vb
        self.keys, self.values = kb[:, :, :length], vb[:, :, :length]


# A layer out of room grows by what its rows may still decode, but by at most its own length
# (at least this many columns): the cache follows the tokens actually decoded, not
# max_new_tokens, and the copies on growth stay linear in all. Reserving everything up front
# made 32 rows of smollm2-135m asking for 4,096 tokens allocate ~6 GB of cache at the first
# step, real memory on a GPU even when every row stops after a few tokens (on CPU the
# untouched pages stay virtual).
RESERVE_STEP_MIN = 64


def reserve_step(length: int, remaining: int) -> int:
    """Columns to add to a cache of ``length`` columns whose rows may decode ``remaining`` more."""
    return max(1, min(remaining, max(RESERVE_STEP_MIN, length)))


def reserve(state: KVBatch, spare: int | None = None) -> None:
    """Give every cache layer room for the next token; a layer without it grows by
    :func:`reserve_step` of ``spare`` (default ``state.reserve``), the tokens still to come."""
    remaining = max(1, state.reserve if spare is None else spare)
    for layer in state.cache.layers:
        if type(layer) is DynamicLayer and layer.keys is not None:
            layer.__class__ = _GrowingLayer  # same state, in-place appends
        if isinstance(layer, _GrowingLayer):
            layer.reserve(reserve_step(layer.keys.shape[2], remaining), needed=1)


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
    blocks: PrefixBlocks | None = None,
    spare: int = 0,
) -> tuple[DynamicCache, torch.Tensor]:
    """A cache holding each row's prefix, left-padded to the longest; and its (B, P) mask.

    ``prefixes[i]`` is ``[layers, 2, kv_heads, n_i, head_dim]`` or None (no soft prompt).
    ``blocks`` keeps the padded block of recent row layouts, so a batch with the same adapters
    in the same rows as a recent one is not stacked again. Every layer is a buffer with
    ``spare`` free columns after the prefix: the prompt's keys/values and then the decoded
    tokens' are written into it in place, where a plain cache would copy the prefix once more
    with the prompt and again when decoding reserves its room.
    """
    block = blocks.get(prefixes, dtype, device) if blocks is not None else None
    if block is None:
        block = _prefix_block(prefixes, layout=layout, dtype=dtype, device=device)
        if blocks is not None:
            blocks.put(prefixes, dtype, device, block)
    stacked, mask = block
    num_layers, kv_heads, head_dim = layout
    batch, width = len(prefixes), mask.shape[1]
    if spare <= 0:
        if stacked is None:
            return DynamicCache(), mask
        # DynamicCache copies the tensors it is given, so the kept block is never written to
        return _cache([(stacked[i, 0], stacked[i, 1]) for i in range(num_layers)]), mask
    empty = torch.empty(batch, kv_heads, 0, head_dim, dtype=dtype, device=device)
    cache = _cache([(empty, empty)] * num_layers)
    for i, layer in enumerate(cache.layers):
        kb = torch.empty(batch, kv_heads, width + spare, head_dim, dtype=dtype, device=device)
        vb = torch.empty_like(kb)
        if stacked is not None:
            kb[:, :, :width] = stacked[i, 0]
            vb[:, :, :width] = stacked[i, 1]
        layer.__class__ = _GrowingLayer
        layer._key_buffer, layer._value_buffer = kb, vb  # type: ignore[attr-defined]
        layer.keys, layer.values = kb[:, :, :width], vb[:, :, :width]
    return cache, mask


class PrefixBlocks:
    """The last few padded prefix blocks, keyed by the identity of each row's prefix tensor."""

    def __init__(self, size: int = 2) -> None:
        self.size = size
        self._blocks: list[tuple[tuple[Any, ...], tuple[torch.Tensor | None, torch.Tensor]]] = []

    @staticmethod
    def _key(
        prefixes: list[torch.Tensor | None], dtype: torch.dtype, device: torch.device
    ) -> tuple[Any, ...]:
        return (dtype, str(device), *prefixes)

    def get(
        self, prefixes: list[torch.Tensor | None], dtype: torch.dtype, device: torch.device
    ) -> tuple[torch.Tensor | None, torch.Tensor] | None:
        key = self._key(prefixes, dtype, device)
        for i, (k, block) in enumerate(self._blocks):
            if len(k) == len(key) and all(a is b for a, b in zip(k, key, strict=True)):
                if i:
                    self._blocks.insert(0, self._blocks.pop(i))
                return block
        return None

    def put(
        self,
        prefixes: list[torch.Tensor | None],
        dtype: torch.dtype,
        device: torch.device,
        block: tuple[torch.Tensor | None, torch.Tensor],
    ) -> None:
        self._blocks.insert(0, (self._key(prefixes, dtype, device), block))
        del self._blocks[self.size :]

    def clear(self) -> None:
        self._blocks.clear()


def _prefix_block(
    prefixes: list[torch.Tensor | None],
    *,
    layout: tuple[int, int, int],
    dtype: torch.dtype,
    device: torch.device,
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """(layers, 2, B, kv_heads, P, head_dim) prefixes left-padded with zeros, and the (B, P) mask."""
    num_layers, kv_heads, head_dim = layout
    batch = len(prefixes)
    longest = max((p.shape[3] for p in prefixes if p is not None), default=0)
    mask = torch.zeros(batch, longest, dtype=torch.long, device=device)
    if longest == 0:
        return None, mask
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
    return stacked, mask


@torch.inference_mode()
def prefill(
    model: Any,
    prefixes: list[torch.Tensor | None],
    prompts: list[list[int]],
    *,
    layout: tuple[int, int, int],
    pad_token_id: int,
    blocks: PrefixBlocks | None = None,
    reserve: int = 0,
) -> tuple[KVBatch, torch.Tensor]:
    """Run the prompts after their prefixes; returns the batch and the last logits (B, V).

    ``reserve``: how many tokens the rows will decode at most. The cache is then allocated once
    with room for them (pass 0 when the batch is about to be merged into another, which copies
    it anyway)."""
    param = next(model.parameters())
    device, dtype = param.device, param.dtype
    batch, longest = len(prompts), max(len(p) for p in prompts)
    cache, prefix_mask = build_prefix_cache(
        prefixes,
        layout=layout,
        dtype=dtype,
        device=device,
        blocks=blocks,
        spare=longest + reserve_step(longest, reserve) if reserve > 0 else 0,
    )
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
        attention_mask=attention_mask(model, mask, positions),
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
        reserve=reserve,
    )
    return state, out.logits[:, -1, :]


@torch.inference_mode()
def decode(model: Any, state: KVBatch) -> torch.Tensor:
    """Feed ``state.last_tokens`` (one per row); returns the next logits (B, V).

    The caller sets ``state.last_tokens`` to the tokens it picks from them.
    """
    ones = torch.ones(state.size, 1, dtype=state.mask.dtype, device=state.mask.device)
    state.mask = torch.cat((state.mask, ones), dim=1)
    reserve(state)
    out = model(
        input_ids=state.last_tokens[:, None],
        attention_mask=attention_mask(model, state.mask, state.positions[:, None]),
        position_ids=state.positions[:, None],
        cache=state.cache,
        use_cache=True,
    )
    state.cache = out.cache
    state.positions = state.positions + 1
    state.reserve = max(0, state.reserve - 1)
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
