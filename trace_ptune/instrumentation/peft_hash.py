"""The adapter hash of a live PEFT prompt-learning adapter, cached until its tensors change.

The hash is the one ``trace_ptune.adapters.hashing.adapter_hash`` gives our artifact for the
same serving tensors, so a PEFT model's generation spans join the artifact's training and eval
spans. Converting PEFT's parameters to serving tensors follows PEFT's own ``get_prompt``:

- prompt tuning: ``prompt_encoder.embedding.weight`` ``[n, hidden]``;
- P-tuning: the encoder's output for the ``n`` virtual token ids ``[n, hidden]``;
- prefix tuning: the prefix encoder's output ``[n, layers * 2 * kv_heads * head_dim]``, viewed as
  PEFT does (``[n, layers * 2, kv_heads, head_dim]``) and laid out as
  ``[layers, 2, kv_heads, n, head_dim]``.

Hashing costs a copy of the tensors, so it runs once per adapter state: the cache key is each
parameter's identity, storage pointer and autograd version counter, which in-place updates
(``load_state_dict``, ``copy_`` under ``no_grad``, most optimizers) bump, plus a count of optimizer
steps taken in this process (a global ``torch.optim`` post-step hook), because fused optimizers
(the Trainer's default ``adamw_torch_fused``) update parameters without bumping their version.
Writes through ``param.data`` bypass both; call :func:`invalidate` after such writes.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Any

from trace_ptune import semconv

_PEFT_TYPES = {
    "PROMPT_TUNING": semconv.METHOD_PROMPT_TUNING,
    "P_TUNING": semconv.METHOD_P_TUNING,
    "PREFIX_TUNING": semconv.METHOD_PREFIX_TUNING,
}


@dataclass(frozen=True)
class AdapterIdentity:
    """A prompt-learning adapter as spans report it."""

    hash: str
    method: str
    num_virtual_tokens: int
    name: str | None
    attributes: dict[str, Any] = field(hash=False, compare=False)  # ptune.adapter.* ready for spans

    @property
    def hash12(self) -> str:
        return self.hash.removeprefix("sha256:")[:12]


class _Entry:
    """A cached identity and what must be unchanged for it to still hold (checked in O(params))."""

    __slots__ = ("config", "encoder", "encoders", "identity", "inference_mode", "n", "params", "steps")

    def __init__(self, peft_model: Any, name: str, config: Any, identity: AdapterIdentity) -> None:
        self.config = config
        self.encoders = peft_model.prompt_encoder._modules
        self.encoder = self.encoders[name]
        self.identity = identity
        self.n = config.num_virtual_tokens
        self.inference_mode = getattr(config, "inference_mode", False)
        self.steps = _optimizer_steps
        # (owning parameter dict, key, parameter, storage pointer, version): a replaced
        # parameter, a new storage or an in-place write each invalidate the entry.
        self.params = tuple(
            (module._parameters, key, param, param.data_ptr(), param._version)
            for module in self.encoder.modules()
            for key, param in module._parameters.items()
            if param is not None
        )

    def fresh(self, peft_model: Any, name: str) -> bool:
        config = self.config
        if (
            self.steps != _optimizer_steps
            or peft_model.peft_config.get(name) is not config
            or self.encoders.get(name) is not self.encoder
            or config.num_virtual_tokens != self.n
            or getattr(config, "inference_mode", False) != self.inference_mode
        ):
            return False
        for holder, key, param, ptr, version in self.params:
            if param._version != version or holder.get(key) is not param or param.data_ptr() != ptr:
                return False
        return True


# peft model -> {adapter name: cached entry}
_cache: weakref.WeakKeyDictionary[Any, dict[str, _Entry]] = weakref.WeakKeyDictionary()
computations = 0  # how many times a hash was actually computed (tests and benchmarks read it)
_optimizer_steps = 0  # optimizer steps seen by the global post-step hook
_hook: Any = None


def _count_step(optimizer: Any, args: Any, kwargs: Any) -> None:
    global _optimizer_steps
    _optimizer_steps += 1


def _ensure_step_hook() -> None:
    global _hook
    if _hook is None:
        from torch.optim.optimizer import register_optimizer_step_post_hook

        _hook = register_optimizer_step_post_hook(_count_step)


def is_prompt_learning(peft_model: Any, adapter_name: str | None = None) -> bool:
    """True when ``peft_model``'s (active) adapter is prompt tuning, prefix tuning or P-tuning."""
    config = _config(peft_model, adapter_name)
    return config is not None and _method(config) is not None


def adapter_identity(peft_model: Any, adapter_name: str | None = None) -> AdapterIdentity | None:
    """The identity of ``peft_model``'s active (or named) prompt-learning adapter; None otherwise.

    Cheap when nothing changed: one dictionary lookup, then the optimizer-step count and each
    adapter parameter's version counter and storage pointer (one parameter for prompt tuning).
    """
    name = adapter_name or getattr(peft_model, "active_adapter", None)
    if not isinstance(name, str):
        return None
    try:
        per_model = _cache.get(peft_model)
    except TypeError:  # not weak-referenceable
        per_model = None
    if per_model is not None:
        entry = per_model.get(name)
        if entry is not None and entry.fresh(peft_model, name):
            return entry.identity
    config = _config(peft_model, name)
    if config is None:
        return None
    method = _method(config)
    if method is None:
        return None
    encoder = peft_model.prompt_encoder[name]
    if _hook is None:
        _ensure_step_hook()
    identity = _compute(peft_model, name, config, method, encoder)
    entry = _Entry(peft_model, name, config, identity)
    try:
        if per_model is None:
            per_model = _cache.setdefault(peft_model, {})
        per_model[name] = entry
    except TypeError:
        pass
    return identity


def invalidate(peft_model: Any) -> None:
    """Forget cached hashes of ``peft_model`` (after writing its tensors through ``.data``)."""
    _cache.pop(peft_model, None)


def serving_tensor(peft_model: Any, adapter_name: str) -> tuple[str, Any, dict[str, int]]:
    """``(method, tensor, layout)`` of a PEFT prompt-learning adapter, as our artifact stores it.

    ``layout`` holds the keyword arguments of ``adapter_hash`` besides the tensor.
    """
    import torch

    config = _config(peft_model, adapter_name)
    method = _method(config) if config is not None else None
    if config is None or method is None:
        from trace_ptune.errors import AdapterFormatError

        raise AdapterFormatError(
            f"PEFT adapter {adapter_name!r} is not prompt tuning, prefix tuning or P-tuning; "
            "only prompt-learning adapters have a soft-prompt hash."
        )
    encoder = peft_model.prompt_encoder[adapter_name]
    n = int(config.num_virtual_tokens)
    hidden = _hidden_size(peft_model, config)
    with torch.no_grad():
        if method == semconv.METHOD_PROMPT_TUNING or getattr(config, "inference_mode", False):
            raw = encoder.embedding.weight[:n]
        else:
            ids = torch.arange(n, device=encoder.embedding.weight.device).unsqueeze(0)
            was_training = encoder.training
            encoder.eval()  # dropout inside an encoder must not change the identity
            try:
                raw = encoder(ids)[0]
            finally:
                encoder.train(was_training)
        raw = raw.detach()
    if method != semconv.METHOD_PREFIX_TUNING:
        return method, raw, {"num_virtual_tokens": n, "hidden": hidden}
    layers = int(config.num_layers)
    kv_heads = int(config.num_attention_heads)  # PEFT stores the KV head count here under GQA
    head_dim = int(config.token_dim) // kv_heads
    # [n, L*2*K*D] -> [n, L*2, K, D] -> [L*2, K, n, D] -> [L, 2, K, n, D]
    prefix = raw.reshape(n, layers * 2, kv_heads, head_dim).permute(1, 2, 0, 3)
    prefix = prefix.reshape(layers, 2, kv_heads, n, head_dim)
    return (
        method,
        prefix,
        {
            "num_virtual_tokens": n,
            "hidden": hidden,
            "layers": layers,
            "kv_heads": kv_heads,
            "head_dim": head_dim,
        },
    )


# ---------------------------------------------------------------- internals


def _config(peft_model: Any, adapter_name: str | None) -> Any:
    configs = getattr(peft_model, "peft_config", None)
    if not isinstance(configs, dict):
        return None
    name = adapter_name or getattr(peft_model, "active_adapter", None)
    config = configs.get(name) if isinstance(name, str) else None
    if config is None or not getattr(config, "is_prompt_learning", False):
        return None
    encoders = getattr(peft_model, "prompt_encoder", None)
    if encoders is None or name not in encoders:
        return None
    return config


def _method(config: Any) -> str | None:
    peft_type = getattr(config, "peft_type", None)
    key = getattr(peft_type, "value", peft_type)
    return _PEFT_TYPES.get(str(key)) if key is not None else None


def _hidden_size(peft_model: Any, config: Any) -> int:
    base = peft_model.get_base_model() if hasattr(peft_model, "get_base_model") else None
    base_config = getattr(base, "config", None)
    if base_config is not None and hasattr(base_config, "get_text_config"):
        base_config = base_config.get_text_config()
    hidden = getattr(base_config, "hidden_size", None)
    return int(hidden) if hidden else int(config.token_dim)


def _compute(peft_model: Any, name: str, config: Any, method: str, encoder: Any) -> AdapterIdentity:
    global computations
    from trace_ptune.adapters.hashing import adapter_hash

    method, tensor, layout = serving_tensor(peft_model, name)
    digest = adapter_hash(method, tensor, **layout)
    computations += 1
    n = int(config.num_virtual_tokens)
    attributes = {
        semconv.PTUNE_ADAPTER_HASH: digest,
        semconv.PTUNE_ADAPTER_METHOD: method,
        semconv.PTUNE_ADAPTER_NUM_VIRTUAL_TOKENS: n,
        semconv.PTUNE_ADAPTER_NAME: name,
    }
    return AdapterIdentity(hash=digest, method=method, num_virtual_tokens=n, name=name, attributes=attributes)
