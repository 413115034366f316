"""Evaluation during training: target loss and greedy exact match, with per-example scores.

Greedy decoding here feeds the soft prompt the same way training does (embeddings in front of
the text, or the prefix as a pre-filled cache), batches rows with left padding and gives every
row its own position ids, so padding never shifts the text against the prompt.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from trace_ptune import semconv
from trace_ptune.models.attention import attention_mask, masked_attention
from trace_ptune.tuning.data import EncodedExample, collate, normalize_text, prompt_ids
from trace_ptune.tuning.methods import head_logits, prefix_cache, target_losses


@dataclass
class EvalResult:
    """Per-metric per-example values (higher is better for every metric but ``loss``)."""

    values: dict[str, list[float]] = field(default_factory=dict)

    def mean(self, metric: str) -> float:
        v = self.values[metric]
        return sum(v) / len(v) if v else float("nan")

    def worst_decile(self, metric: str) -> float:
        """Mean of the worst 10 % (at least one example): highest losses, lowest scores."""
        v = sorted(self.values[metric], reverse=(metric == "loss"))
        k = max(1, len(v) // 10)
        return sum(v[:k]) / k if v else float("nan")

    def summary(self) -> dict[str, float]:
        return {m: self.mean(m) for m in self.values}


@torch.no_grad()
def example_losses(
    model: Any, method: str, prompt: Tensor, examples: Sequence[EncodedExample], pad_id: int, batch_size: int
) -> list[float]:
    """Mean target-token loss of each example."""
    out: list[float] = []
    for start in range(0, len(examples), batch_size):
        chunk = examples[start : start + batch_size]
        batch = {k: v.to(prompt.device) for k, v in collate(chunk, pad_id).items()}
        prompts = prompt.unsqueeze(0).expand(len(chunk), *prompt.shape)
        losses, rows = target_losses(model, method, prompts, batch)
        sums = torch.zeros(len(chunk), dtype=losses.dtype, device=losses.device).index_add_(0, rows, losses)
        counts = torch.zeros_like(sums).index_add_(0, rows, torch.ones_like(losses))
        out.extend((sums / counts).tolist())
    return out


@torch.no_grad()
def greedy_generate(
    model: Any,
    method: str,
    prompt: Tensor,
    token_ids: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    eos_id: int | None,
    pad_id: int,
) -> list[list[int]]:
    """Greedy continuation of each prompt (token ids, eos excluded) with the soft prompt applied."""
    from transformers import DynamicCache

    B = len(token_ids)
    T = max(len(t) for t in token_ids)
    ids = torch.full((B, T), pad_id, dtype=torch.long)
    text_mask = torch.zeros((B, T), dtype=torch.long)
    for b, t in enumerate(token_ids):
        if t:
            ids[b, T - len(t) :] = torch.tensor(list(t), dtype=torch.long)
            text_mask[b, T - len(t) :] = 1
    embed = model.get_input_embeddings()
    ids, text_mask = ids.to(prompt.device), text_mask.to(prompt.device)
    tok = embed(ids)  # (B, T, H)
    if method == semconv.METHOD_PREFIX_TUNING:
        n = prompt.shape[3]
        cache = prefix_cache(prompt.unsqueeze(0).expand(B, *prompt.shape).to(tok.dtype))
        mask = torch.cat([text_mask.new_ones((B, n)), text_mask], dim=1)
        positions = n + (text_mask.cumsum(1) - 1).clamp(min=0)
        inputs = tok
    else:
        n = prompt.shape[0]
        # a cache that keeps every column: the model's own would drop the columns a sliding
        # window has passed, which the position-based masks below still count
        cache = DynamicCache()
        inputs = torch.cat([prompt.unsqueeze(0).expand(B, *prompt.shape).to(tok.dtype), tok], dim=1)
        mask = torch.cat([text_mask.new_ones((B, n)), text_mask], dim=1)
        positions = (mask.cumsum(1) - 1).clamp(min=0)
    out: list[list[int]] = [[] for _ in range(B)]
    done = torch.zeros(B, dtype=torch.bool)
    for _ in range(max_new_tokens):
        query_positions = positions[:, -inputs.shape[1] :]
        res = model.base_model(
            inputs_embeds=inputs,
            attention_mask=attention_mask(model, mask, query_positions),
            position_ids=positions,
            cache=cache,
            use_cache=True,
        )
        cache = res.cache if hasattr(res, "cache") else res.past_key_values
        logits = head_logits(model, res.last_hidden_state[:, -1])  # (B, V)
        nxt = logits.argmax(-1)  # (B,)
        nxt_list = nxt.tolist()
        for b in range(B):
            if not done[b]:
                if eos_id is not None and nxt_list[b] == eos_id:
                    done[b] = True
                else:
                    out[b].append(nxt_list[b])
        if bool(done.all()):
            break
        inputs = embed(nxt.unsqueeze(1))  # (B, 1, H)
        mask = torch.cat([mask, mask.new_ones((B, 1))], dim=1)
        positions = positions[:, -1:] + 1
    return out


def evaluate(
    model: Any,
    tokenizer: Any,
    method: str,
    prompt: Tensor,
    rows: Sequence[dict[str, Any]],
    examples: Sequence[EncodedExample],
    *,
    batch_size: int,
    max_new_tokens: int,
    chat_template: bool = False,
    generate: bool = True,
    scorers: Sequence[str] = (),
) -> EvalResult:
    """Loss of every eval example and, with ``generate``, greedy exact match plus any
    ``scorers`` (spec strings of :mod:`trace_ptune.evals.scorers`, e.g. ``f1``)."""
    pad_id = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)
    result = EvalResult()
    result.values["loss"] = example_losses(model, method, prompt.detach(), examples, pad_id, batch_size)
    if generate:
        eos = tokenizer.eos_token_id
        matches: list[float] = []
        extra = _load_scorers(scorers)
        for sc in extra:
            result.values.setdefault(sc.name, [])
        for start in range(0, len(examples), batch_size):
            chunk = examples[start : start + batch_size]
            prompts = [e.ids[: e.target_start] for e in chunk]
            if any(not p for p in prompts):  # a row truncated to nothing: re-tokenise its input
                prompts = [
                    p or prompt_ids(tokenizer, rows[e.index]["input"], chat_template)
                    for p, e in zip(prompts, chunk, strict=True)
                ]
            with masked_attention(model):  # flash attention (sliding windows) -> SDPA for padded rows
                outs = greedy_generate(
                    model,
                    method,
                    prompt.detach(),
                    prompts,
                    max_new_tokens=max_new_tokens,
                    eos_id=eos,
                    pad_id=pad_id,
                )
            for e, gen in zip(chunk, outs, strict=True):
                text = tokenizer.decode(gen, skip_special_tokens=True)
                matches.append(float(normalize_text(text) == normalize_text(rows[e.index]["target"])))
                for sc in extra:
                    result.values[sc.name].append(_score(sc, text, rows[e.index]))
        result.values["exact_match"] = matches
    return result


def _load_scorers(specs: Sequence[str]) -> list[Any]:
    if not specs:
        return []
    from trace_ptune.evals.scorers import get_scorer

    return [get_scorer(spec) for spec in specs]


def _score(sc: Any, output: str, row: dict[str, Any]) -> float:
    from trace_ptune.evals.datasets import Example
    from trace_ptune.evals.scorers import apply_scorer

    example = Example(id=str(row.get("id", "")), input=row["input"], expected=row["target"])
    return float(apply_scorer(sc, output, example).value)
