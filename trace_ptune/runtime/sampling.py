"""Per-row token selection: greedy, temperature, top-k, top-p, each row with its own RNG.

Greedy rows are picked with one vectorised ``argmax``; sampled rows draw from their own
``torch.Generator`` (seeded per request), so a row's tokens do not depend on which other
requests share its batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class RowSampler:
    """Sampling parameters of one row, plus its generator (None for greedy)."""

    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    generator: torch.Generator | None = None

    @classmethod
    def create(
        cls, temperature: float, top_p: float, top_k: int, seed: int | None, device: torch.device
    ) -> RowSampler:
        generator = None
        if temperature > 0:
            generator = torch.Generator(device=device)
            if seed is None:
                generator.seed()
            else:
                generator.manual_seed(seed)
        return cls(temperature=temperature, top_p=top_p, top_k=top_k, generator=generator)

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0


def filter_logits(logits: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    """Scaled logits of one row ``[V]`` with everything outside top-k / top-p set to -inf."""
    logits = logits.float() / temperature
    if top_k > 0 and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        # Drop a token when the mass strictly before it already reaches top_p (the first always stays).
        drop_sorted = (torch.cumsum(probs, dim=-1) - probs) >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(0, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def select_tokens(logits: torch.Tensor, samplers: list[RowSampler]) -> torch.Tensor:
    """Next token per row: ``logits [B, V]`` -> ``[B]`` (long)."""
    tokens = torch.argmax(logits, dim=-1)
    for row, sampler in enumerate(samplers):
        if sampler.greedy:
            continue
        filtered = filter_logits(logits[row], sampler.temperature, sampler.top_k, sampler.top_p)
        probs = torch.softmax(filtered, dim=-1)
        tokens[row] = torch.multinomial(probs, 1, generator=sampler.generator)[0]
    return tokens
