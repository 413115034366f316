"""Import and export PEFT prompt-learning adapters (``adapter_config.json`` + ``adapter_model.safetensors``).

PEFT saves one tensor, ``prompt_embeddings``:

- ``PROMPT_TUNING``: ``[n, hidden]``, the prepended embeddings;
- ``P_TUNING``: ``[n, hidden]``, the prompt encoder's *output* (PEFT drops the encoder itself);
- ``PREFIX_TUNING``: ``[n, layers * 2 * kv_heads * head_dim]``, the flattened key/value prefix
  (projected through the prefix MLP when ``prefix_projection`` was on). PEFT views it as
  ``[n, layers * 2, kv_heads, head_dim]`` and permutes to ``[layers * 2, kv_heads, n, head_dim]``,
  where entry ``2 * l`` is layer ``l``'s key and ``2 * l + 1`` its value; ours is
  ``[layers, 2, kv_heads, n, head_dim]``, the same numbers regrouped. For grouped-query models
  PEFT sets ``num_attention_heads`` to the key/value heads and ``token_dim`` to
  ``kv_heads * head_dim``, so the base hidden size is not in a foreign prefix-tuning config:
  pass ``base=`` when importing one.

A directory holding the prefix encoder's weights instead (``embedding`` + ``transform.*``) is
imported by running the encoder once. Exports also write ``ptune_manifest.json`` (our manifest)
and, for P-tuning, ``ptune_encoder.safetensors``, which PEFT ignores and :func:`import_peft`
uses, so an export -> import round trip keeps everything; the hash survives any round trip.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trace_ptune import semconv
from trace_ptune.adapters._fs import atomic_write_json, publish_dir, staging_dir
from trace_ptune.adapters.artifact import SoftPrompt
from trace_ptune.errors import AdapterFormatError, AdapterIntegrityError

if TYPE_CHECKING:
    from torch import Tensor

    from trace_ptune.models import BaseModel

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
SIDECAR_MANIFEST = "ptune_manifest.json"
SIDECAR_ENCODER = "ptune_encoder.safetensors"
PROMPT_EMBEDDINGS = "prompt_embeddings"

_PEFT_TYPE = {
    "PROMPT_TUNING": semconv.METHOD_PROMPT_TUNING,
    "PREFIX_TUNING": semconv.METHOD_PREFIX_TUNING,
    "P_TUNING": semconv.METHOD_P_TUNING,
}
_METHOD_TO_PEFT = {v: k for k, v in _PEFT_TYPE.items()}
_P_TUNING_FIELDS = (
    "encoder_reparameterization_type",
    "encoder_hidden_size",
    "encoder_num_layers",
    "encoder_dropout",
)


def import_peft(directory: str | Path, *, base: BaseModel | None = None) -> SoftPrompt:
    """Read a PEFT prompt-tuning, prefix-tuning or P-tuning directory as a :class:`SoftPrompt`.

    ``base`` (optional) supplies the hidden size a foreign prefix-tuning config lacks, and is
    checked for shape compatibility; its fingerprint is recorded when the directory has none.
    """
    root = Path(directory)
    config = _read_config(root)
    peft_type = str(config.get("peft_type", "")).upper()
    method = _PEFT_TYPE.get(peft_type)
    if method is None:
        raise AdapterFormatError(
            f"{str(root)!r} holds a PEFT {config.get('peft_type')!r} adapter; only PROMPT_TUNING, "
            "PREFIX_TUNING and P_TUNING (soft prompts) can be imported."
        )
    if int(config.get("num_transformer_submodules") or 1) != 1:
        raise AdapterFormatError(
            f"{str(root)!r} is an encoder-decoder adapter (num_transformer_submodules="
            f"{config.get('num_transformer_submodules')}); only decoder-only models are supported."
        )
    for key in ("num_virtual_tokens", *(("num_layers", "num_attention_heads", "token_dim")
                                         if method == semconv.METHOD_PREFIX_TUNING else ())):  # fmt: skip
        if not isinstance(config.get(key), int):
            raise AdapterFormatError(
                f"{str(root / CONFIG_FILE)!r} is missing the integer field {key!r}; re-save the PEFT adapter."
            )
    ours = _read_sidecar(root)
    tensors = _read_weights(root)
    n = int(config["num_virtual_tokens"])
    if method == semconv.METHOD_PREFIX_TUNING:
        sp = _import_prefix(root, config, tensors, n, ours, base)
    else:
        flat = _serving_embeddings(root, tensors)
        hidden = int(config.get("token_dim") or flat.shape[-1])
        encoder_config = (
            {k: config.get(k) for k in _P_TUNING_FIELDS} if method == semconv.METHOD_P_TUNING else None
        )
        encoder_state = _read_encoder(root) if method == semconv.METHOD_P_TUNING else None
        sp = _build(
            method,
            n,
            hidden,
            root,
            embeddings=flat,
            encoder_state=encoder_state,
            encoder_config=encoder_config,
        )
    if ours.get("hash") not in (None, sp.hash):
        # The weights changed after our export (e.g. trained further in PEFT): new content, old one is its parent.
        ours = {"parent_hash": ours["hash"], "base_model_name": ours.get("base_model_name"),
                "base_fingerprint": ours.get("base_fingerprint")}  # fmt: skip
    _apply_provenance(sp, ours, config, base)
    if base is not None:
        sp.check_compatible(base, allow_base_mismatch=True)
    return sp


def export_peft(sp: SoftPrompt, directory: str | Path, base: BaseModel | None = None) -> Path:
    """Write ``sp`` as a PEFT directory that ``PeftModel.from_pretrained(base.model, directory)`` loads.

    ``base`` is checked for shape compatibility and fills ``num_attention_heads`` / ``num_layers``
    (PEFT recomputes them from the model it loads onto; prefix tuning takes them from ``sp``).
    """
    from safetensors.torch import save_file

    if base is not None:
        sp.check_compatible(base, allow_base_mismatch=True)
    config: dict[str, Any] = {
        "peft_type": _METHOD_TO_PEFT[sp.method],
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": sp.base_model_name or (base.name if base is not None else None),
        "revision": None,
        "inference_mode": True,
        "num_virtual_tokens": int(sp.num_virtual_tokens),
        "token_dim": int(sp.token_dim),
        "num_transformer_submodules": 1,
        "num_attention_heads": base.num_heads if base is not None else None,
        "num_layers": base.num_layers if base is not None else sp.num_layers,
        "modules_to_save": None,
    }
    serving = sp.serving_tensor().detach().to("cpu")
    if sp.method == semconv.METHOD_PREFIX_TUNING:
        layers, _, kv_heads, n, head_dim = serving.shape
        # ours [L, 2, K, n, D] -> PEFT's flat [n, L * 2 * K * D]
        weights = serving.permute(3, 0, 1, 2, 4).reshape(n, layers * 2 * kv_heads * head_dim)
        config.update(
            token_dim=int(kv_heads * head_dim),
            num_attention_heads=int(kv_heads),
            encoder_hidden_size=int(kv_heads * head_dim),
            prefix_projection=False,
        )
    else:
        weights = serving
        if sp.method == semconv.METHOD_P_TUNING:
            enc = dict(sp.encoder_config or {})
            config.update(
                encoder_reparameterization_type=enc.get("encoder_reparameterization_type") or "MLP",
                encoder_hidden_size=int(enc.get("encoder_hidden_size") or sp.token_dim),
                encoder_num_layers=int(enc.get("encoder_num_layers") or 2),
                encoder_dropout=float(enc.get("encoder_dropout") or 0.0),
            )
        else:
            config.update(
                prompt_tuning_init="RANDOM", tokenizer_name_or_path=None, prompt_tuning_init_text=None
            )
    final = Path(directory)
    with staging_dir(final) as tmp:
        save_file(
            {PROMPT_EMBEDDINGS: weights.contiguous()}, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"}
        )
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        if sp.encoder_state:
            encoder = {k: v.detach().to("cpu").contiguous() for k, v in sp.encoder_state.items()}
            save_file(encoder, str(tmp / SIDECAR_ENCODER), metadata={"format": "pt"})
        atomic_write_json(tmp / SIDECAR_MANIFEST, sp.manifest())
        publish_dir(tmp, final)
    return final


# ---------------------------------------------------------------- reading


def _read_config(root: Path) -> dict[str, Any]:
    path = root / CONFIG_FILE
    if not root.is_dir():
        raise AdapterFormatError(f"No PEFT adapter directory at {str(root)!r}; check the path.")
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        raise AdapterFormatError(
            f"{str(root)!r} has no {CONFIG_FILE}; it is not a PEFT adapter directory."
        ) from None
    except ValueError:
        raise AdapterFormatError(f"{str(path)!r} is not valid JSON; re-save the PEFT adapter.") from None
    if not isinstance(config, dict):
        raise AdapterFormatError(f"{str(path)!r} is not a JSON object; re-save the PEFT adapter.")
    return config


def _read_sidecar(root: Path) -> dict[str, Any]:
    try:
        data = json.loads((root / SIDECAR_MANIFEST).read_text())
    except (FileNotFoundError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _read_weights(root: Path) -> dict[str, Tensor]:
    from safetensors.torch import load_file

    path = root / WEIGHTS_FILE
    if not path.is_file():
        if (root / "adapter_model.bin").is_file():
            raise AdapterFormatError(
                f"{str(root)!r} stores its weights as a pickle (adapter_model.bin), which trace-ptune never "
                "loads; re-save it with safe_serialization=True."
            )
        raise AdapterFormatError(f"{str(root)!r} has no {WEIGHTS_FILE}; re-save the PEFT adapter.")
    try:
        return load_file(str(path))
    except Exception as exc:  # safetensors raises SafetensorError / ValueError on corrupt input
        raise AdapterIntegrityError(
            f"{str(path)!r} is not a readable safetensors file ({type(exc).__name__}); re-save the PEFT adapter."
        ) from None


def _read_encoder(root: Path) -> dict[str, Tensor] | None:
    from safetensors.torch import load_file

    path = root / SIDECAR_ENCODER
    return load_file(str(path)) if path.is_file() else None


def _find(tensors: dict[str, Tensor], suffix: str) -> Tensor | None:
    for key, value in tensors.items():
        if key == suffix or key.endswith("." + suffix):
            return value
    return None


def _serving_embeddings(root: Path, tensors: dict[str, Tensor]) -> Tensor:
    flat = tensors.get(PROMPT_EMBEDDINGS)
    if flat is None:
        raise AdapterFormatError(
            f"{str(root / WEIGHTS_FILE)!r} has no {PROMPT_EMBEDDINGS!r} tensor; re-save the PEFT adapter."
        )
    return flat


def _import_prefix(
    root: Path,
    config: dict[str, Any],
    tensors: dict[str, Tensor],
    n: int,
    ours: dict[str, Any],
    base: BaseModel | None,
) -> SoftPrompt:
    import torch

    flat = tensors.get(PROMPT_EMBEDDINGS)
    if flat is None:
        flat = _run_prefix_encoder(root, tensors)
    layers = int(config["num_layers"])
    kv_heads = int(config["num_attention_heads"])
    head_dim = int(config["token_dim"]) // kv_heads
    if tuple(flat.shape) != (n, layers * 2 * kv_heads * head_dim):
        raise AdapterFormatError(
            f"The prefix in {str(root)!r} has shape {list(flat.shape)} but its config needs "
            f"[{n}, {layers * 2 * kv_heads * head_dim}]; re-save the PEFT adapter."
        )
    hidden = ours.get("token_dim") or (base.hidden_size if base is not None else None)
    if hidden is None:
        raise AdapterFormatError(
            f"The PEFT prefix-tuning config in {str(root)!r} does not record the base model's hidden size; "
            "pass the base model (--base) when importing it."
        )
    # PEFT's flat [n, L*2*K*D] -> ours [L, 2, K, n, D]
    prefix_kv = flat.reshape(n, layers, 2, kv_heads, head_dim).permute(1, 2, 3, 0, 4).contiguous()
    with torch.no_grad():
        return _build(
            semconv.METHOD_PREFIX_TUNING,
            n,
            int(hidden),
            root,
            prefix_kv=prefix_kv,
            num_layers=layers,
            num_kv_heads=kv_heads,
            head_dim=head_dim,
        )


def _run_prefix_encoder(root: Path, tensors: dict[str, Tensor]) -> Tensor:
    """The serving prefix of a projected prefix encoder: ``Linear -> tanh -> Linear`` over its embedding."""
    import torch

    parts = [_find(tensors, key) for key in ("embedding.weight", "transform.0.weight", "transform.0.bias",
                                              "transform.2.weight", "transform.2.bias")]  # fmt: skip
    if any(p is None for p in parts):
        raise AdapterFormatError(
            f"{str(root / WEIGHTS_FILE)!r} has neither {PROMPT_EMBEDDINGS!r} nor a prefix encoder "
            "(embedding + transform); re-save the PEFT adapter."
        )
    emb, w0, b0, w2, b2 = (p.to(torch.float32) for p in parts)  # type: ignore[union-attr]
    with torch.no_grad():
        return torch.nn.functional.linear(torch.tanh(torch.nn.functional.linear(emb, w0, b0)), w2, b2)


def _build(method: str, n: int, hidden: int, root: Path, **kwargs: Any) -> SoftPrompt:
    try:
        return SoftPrompt(method=method, num_virtual_tokens=n, token_dim=hidden, **kwargs)
    except AdapterFormatError as exc:
        raise AdapterFormatError(
            f"The PEFT adapter in {str(root)!r} does not match its config: {exc}"
        ) from None


def _apply_provenance(
    sp: SoftPrompt, ours: dict[str, Any], config: dict[str, Any], base: BaseModel | None
) -> None:
    for key in ("name", "parent_hash", "base_model_name", "base_fingerprint", "init", "created_at",
                "train_dataset_hash"):  # fmt: skip
        if ours.get(key) is not None:
            setattr(sp, key, ours[key])
    if ours.get("metadata"):
        sp.metadata = dict(ours["metadata"])
    if sp.base_model_name is None:
        sp.base_model_name = config.get("base_model_name_or_path") or (
            base.name if base is not None else None
        )
    if sp.base_fingerprint is None and base is not None:
        sp.base_fingerprint = base.fingerprint
    if sp.init is None:
        sp.init = "peft"
