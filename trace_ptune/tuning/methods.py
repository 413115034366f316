"""The three soft-prompt methods as small modules, and the target-only loss.

- ``prompt_tuning``: ``n`` learned vectors prepended to the token embeddings (Lester et al.).
- ``p_tuning``: ``n`` learned vectors passed through an encoder (MLP or bidirectional LSTM,
  residual, last layer zero-initialised so step 0 equals the init) and then prepended (Liu et al.).
- ``prefix_tuning``: a learned key/value prefix for every layer, laid out
  ``[layers, 2, kv_heads, n, head_dim]`` (grouped-query aware), fed as a pre-filled cache
  (Li & Liang). Text positions start at ``n``, as if the prefix had been real tokens.

The base model never runs its LM head over the whole sequence: :func:`target_losses` gathers
the hidden states that predict target tokens and applies the head to those rows only. With a
49k vocabulary that saves most of the step's activation memory and a good part of its time.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trace_ptune import semconv
from trace_ptune.errors import ConfigError, DataError


def model_dims(model: Any) -> dict[str, int]:
    """hidden, layers, heads, kv_heads, head_dim and vocab of a decoder-only transformers model."""
    from trace_ptune.models.attention import kv_layout

    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    layers, kv_heads, head_dim = kv_layout(model)  # what the cache holds, not what config says
    return {
        "hidden": int(cfg.hidden_size),
        "layers": layers,
        "heads": int(cfg.num_attention_heads),
        "kv_heads": kv_heads,
        "head_dim": head_dim,
        "vocab": int(model.get_input_embeddings().weight.shape[0]),
    }


# ---------------------------------------------------------------- modules


class SoftPromptModule(nn.Module):
    """A trainable soft prompt; ``serving()`` is the tensor that identifies the adapter."""

    method: str = ""
    num_virtual_tokens: int

    def serving(self) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


class PromptTuning(SoftPromptModule):
    method = semconv.METHOD_PROMPT_TUNING

    def __init__(self, init: Tensor) -> None:
        super().__init__()
        self.num_virtual_tokens = int(init.shape[0])
        self.embeddings = nn.Parameter(init.detach().clone())  # (n, H)

    def serving(self) -> Tensor:
        return self.embeddings


class PTuning(SoftPromptModule):
    """Virtual-token embeddings re-parameterised by an encoder: ``out = e + f(e)``."""

    method = semconv.METHOD_P_TUNING

    def __init__(self, init: Tensor, encoder: str = "mlp", hidden_size: int | None = None) -> None:
        super().__init__()
        n, H = init.shape
        self.num_virtual_tokens = int(n)
        self.encoder_type = encoder
        self.encoder_hidden_size = int(hidden_size or H)
        E = self.encoder_hidden_size
        self.embeddings = nn.Parameter(init.detach().clone())  # (n, H)
        dtype = init.dtype
        if encoder == "lstm":
            self.lstm = nn.LSTM(H, E, num_layers=2, bidirectional=True, batch_first=True, dtype=dtype)
            self.head = nn.Sequential(
                nn.Linear(2 * E, E, dtype=dtype), nn.ReLU(), nn.Linear(E, H, dtype=dtype)
            )
        elif encoder == "mlp":
            self.lstm = None
            self.head = nn.Sequential(nn.Linear(H, E, dtype=dtype), nn.ReLU(), nn.Linear(E, H, dtype=dtype))
        else:
            raise ConfigError(f"P-tuning encoder {encoder!r} is unknown; use mlp or lstm.")
        # Zero the last layer: training starts exactly at the chosen init.
        nn.init.zeros_(self.head[-1].weight)
        nn.init.zeros_(self.head[-1].bias)

    def encoder_config(self) -> dict[str, Any]:
        return {"type": self.encoder_type, "hidden_size": self.encoder_hidden_size, "residual": True}

    def encoder_state(self) -> dict[str, Tensor]:
        return {k: v.detach().clone() for k, v in self.state_dict().items()}

    def serving(self) -> Tensor:
        x = self.embeddings
        if self.lstm is not None:
            h, _ = self.lstm(x.unsqueeze(0))  # (1, n, 2E)
            h = h.squeeze(0)
        else:
            h = x
        return x + self.head(h)  # (n, H)


class PrefixTuning(SoftPromptModule):
    method = semconv.METHOD_PREFIX_TUNING

    def __init__(self, init: Tensor) -> None:
        super().__init__()
        if init.dim() != 5 or init.shape[1] != 2:
            raise ConfigError(
                f"Prefix init must be [layers, 2, kv_heads, n, head_dim], got {tuple(init.shape)}."
            )
        self.num_virtual_tokens = int(init.shape[3])
        self.prefix = nn.Parameter(init.detach().clone())  # (L, 2, KV, n, D)

    def serving(self) -> Tensor:
        return self.prefix


# ---------------------------------------------------------------- initialisation


def _embedding_weight(model: Any) -> Tensor:
    return model.get_input_embeddings().weight


def init_token_ids(
    init: str,
    n: int,
    tokenizer: Any,
    vocab: int,
    generator: torch.Generator,
    label_texts: list[str] | None = None,
) -> list[int] | None:
    """Token ids an init draws its vectors from (``None`` for ``random``)."""
    if init == "random":
        return None
    if init == "vocab":
        return torch.randint(0, vocab, (n,), generator=generator).tolist()
    if init.startswith("text:"):
        text = init[5:].strip().strip('"').strip("'")
        ids = [int(t) for t in tokenizer(text, add_special_tokens=False)["input_ids"]]
        if not ids:
            raise ConfigError(f"init text {text!r} tokenizes to nothing; give some words.")
        return [ids[i % len(ids)] for i in range(n)]  # repeated, or truncated, to n
    if init == "labels":
        counts: dict[int, int] = {}
        for text in label_texts or []:
            for t in tokenizer(text, add_special_tokens=False)["input_ids"]:
                counts[int(t)] = counts.get(int(t), 0) + 1
        labels = sorted(counts, key=lambda t: (-counts[t], t))[:n]
        if not labels:
            raise DataError("init 'labels' found no target tokens; use init vocab or text instead.")
        # Lester et al.: class-label embeddings first, the rest sampled from the vocabulary.
        rest = torch.randint(0, vocab, (n - len(labels),), generator=generator).tolist()
        return labels + rest
    raise ConfigError(f'init {init!r} is unknown; use random, vocab, labels or text:"...".')


@torch.no_grad()
def init_embeddings(
    model: Any,
    tokenizer: Any,
    init: str,
    n: int,
    generator: torch.Generator,
    label_texts: list[str] | None = None,
) -> Tensor:
    """``(n, H)`` initial prompt vectors in the model's dtype."""
    weight = _embedding_weight(model)
    ids = init_token_ids(init, n, tokenizer, weight.shape[0], generator, label_texts)
    if ids is None:
        # Match the scale of real token embeddings rather than N(0, 1).
        std = float(weight.float().std())
        noise = torch.randn((n, weight.shape[1]), generator=generator, dtype=torch.float32)
        return (noise * std).to(weight.dtype)
    return weight[torch.tensor(ids, dtype=torch.long)].detach().clone()


@torch.no_grad()
def init_prefix(model: Any, tokenizer: Any, init: str, n: int, generator: torch.Generator) -> Tensor:
    """``(L, 2, KV, n, D)`` initial prefix: the model's own keys/values for real tokens.

    ``vocab`` and ``text`` run the base over those tokens and keep its cache, so the prefix
    starts as the activations of an actual prompt; ``random`` is noise at that scale.
    """
    vocab = _embedding_weight(model).shape[0]
    ids = init_token_ids("vocab" if init == "random" else init, n, tokenizer, vocab, generator)
    assert ids is not None
    kv = prefix_from_tokens(model, ids)
    if init == "random":
        std = kv.float().std(dim=(2, 3, 4), keepdim=True)  # per layer, K and V separately
        noise = torch.randn(kv.shape, generator=generator, dtype=torch.float32)
        kv = (noise * std).to(kv.dtype)
    return kv


@torch.no_grad()
def prefix_from_tokens(model: Any, ids: list[int]) -> Tensor:
    from transformers import DynamicCache

    cache = DynamicCache()
    model.base_model(input_ids=torch.tensor([ids], dtype=torch.long), cache=cache, use_cache=True)
    layers = [torch.stack([layer.keys[0], layer.values[0]]) for layer in cache.layers]  # (2, KV, n, D)
    return torch.stack(layers).detach().clone()


def build_module(
    method: str,
    model: Any,
    tokenizer: Any,
    *,
    init: str,
    n: int,
    generator: torch.Generator,
    label_texts: list[str] | None = None,
    encoder: str = "mlp",
    encoder_hidden_size: int | None = None,
) -> SoftPromptModule:
    """A fresh module for ``method`` with its initial tensor."""
    if method == semconv.METHOD_PREFIX_TUNING:
        return PrefixTuning(init_prefix(model, tokenizer, init, n, generator))
    emb = init_embeddings(model, tokenizer, init, n, generator, label_texts)
    if method == semconv.METHOD_P_TUNING:
        return PTuning(emb, encoder=encoder, hidden_size=encoder_hidden_size)
    if method == semconv.METHOD_PROMPT_TUNING:
        return PromptTuning(emb)
    raise ConfigError(f"method {method!r} is unknown; pick one of {', '.join(semconv.METHODS)}.")


# ---------------------------------------------------------------- forward and loss


def prefix_cache(prefix: Tensor) -> Any:
    """A ``DynamicCache`` pre-filled from a per-row prefix ``(B, L, 2, KV, n, D)``."""
    from transformers import DynamicCache

    return DynamicCache(ddp_cache_data=[(prefix[:, i, 0], prefix[:, i, 1]) for i in range(prefix.shape[1])])


def decoder_hidden(
    model: Any, method: str, prompts: Tensor, input_ids: Tensor, attention_mask: Tensor
) -> Tensor:
    """Last hidden states ``(B, P + T, H)`` of the base decoder with a soft prompt in front.

    ``prompts`` is per row: ``(B, n, H)`` for embedding methods or ``(B, L, 2, KV, n, D)`` for
    prefix tuning (``P = 0`` then: the prefix lives in the cache and has no hidden states).
    Rows are right-padded, so positions are ``0..`` for the whole (prompt + text) sequence and
    the causal mask alone is exact for every real token (a pad only ever follows the text):
    no padding mask is passed, which lets attention take its causal fast path. Pad positions
    produce values nobody reads.
    """
    B, T = input_ids.shape
    tok = model.get_input_embeddings()(input_ids)  # (B, T, H)
    if method == semconv.METHOD_PREFIX_TUNING:
        n = prompts.shape[4]
        positions = torch.arange(n, n + T, device=input_ids.device).unsqueeze(0).expand(B, T)
        cache = prefix_cache(prompts.to(tok.dtype))
        out = model.base_model(inputs_embeds=tok, position_ids=positions, cache=cache, use_cache=True)
        return out.last_hidden_state
    n = prompts.shape[1]
    embeds = torch.cat([prompts.to(tok.dtype), tok], dim=1)  # (B, n + T, H)
    positions = torch.arange(n + T, device=input_ids.device).unsqueeze(0).expand(B, n + T)
    out = model.base_model(inputs_embeds=embeds, position_ids=positions, use_cache=False)
    return out.last_hidden_state


def head_logits(model: Any, hidden: Tensor) -> Tensor:
    """The LM head on some hidden rows, with the model's logit scaling/soft-capping if it has any."""
    logits = model.get_output_embeddings()(hidden)
    cfg = model.config
    scale = getattr(cfg, "logit_scale", None)
    if scale:
        logits = logits * scale
    cap = getattr(cfg, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits


def target_losses(
    model: Any, method: str, prompts: Tensor, batch: dict[str, Tensor]
) -> tuple[Tensor, Tensor]:
    """Per-target-token cross-entropy ``(M,)`` and the batch row of each token ``(M,)``.

    Token ``t`` of a row is predicted by the hidden state one position earlier; only those
    ``M`` rows of hidden state go through the LM head.
    """
    input_ids, attention_mask, target_mask = batch["input_ids"], batch["attention_mask"], batch["target_mask"]
    hidden = decoder_hidden(model, method, prompts, input_ids, attention_mask)
    offset = 0 if method == semconv.METHOD_PREFIX_TUNING else prompts.shape[1]
    rows, cols = target_mask.nonzero(as_tuple=True)  # (M,), (M,)
    picked = hidden[rows, cols + offset - 1]  # (M, H)
    logits = head_logits(model, picked).float()  # (M, V)
    losses = F.cross_entropy(logits, input_ids[rows, cols], reduction="none")
    return losses, rows


def soft_prompt_rows(modules: list[SoftPromptModule], tenants: Tensor) -> Tensor:
    """Per-row prompt tensors: each row gets its tenant's prompt (one module: broadcast)."""
    if len(modules) == 1:
        s = modules[0].serving()
        return s.unsqueeze(0).expand(tenants.shape[0], *s.shape)
    stacked = torch.stack([m.serving() for m in modules])  # (K, ...)
    return stacked[tenants]  # (B, ...)


def lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    """Multiplier of the peak learning rate at optimizer step ``step`` (0-based)."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    span = max(1, total - warmup)
    progress = min(1.0, (step - warmup) / span)
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return max(0.0, 1.0 - progress)
