"""The soft-prompt artifact: tensors + manifest, saved as a directory, verified on load.

Directory layout (``format_version`` 1)::

    <dir>/adapter.safetensors   serving tensor ("embeddings" or "prefix_kv") and, for P-tuning,
                                the encoder weights as "encoder.<parameter name>"
    <dir>/manifest.json         see MANIFEST_FIELDS; "hash" is the adapter hash and "files" maps
                                each file to the sha256 of its bytes

Loading checks the file digest and recomputes the adapter hash: a tampered, truncated or corrupt
file raises :class:`~trace_ptune.errors.AdapterIntegrityError`; a manifest missing a field raises
:class:`~trace_ptune.errors.AdapterFormatError`. Writes go to a temporary directory that is
renamed into place, so a reader never sees half an artifact. No pickle: safetensors + JSON only.
"""

from __future__ import annotations

import copy
import datetime as _dt
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trace_ptune import semconv
from trace_ptune.adapters import hashing
from trace_ptune.adapters._fs import publish_dir, staging_dir
from trace_ptune.errors import AdapterFormatError, AdapterIntegrityError, AdapterMismatchError

if TYPE_CHECKING:
    from torch import Tensor

    from trace_ptune.models import BaseModel

FORMAT_VERSION = 1
TENSORS_FILE = "adapter.safetensors"
MANIFEST_FILE = "manifest.json"
EMBEDDINGS_KEY = "embeddings"
PREFIX_KV_KEY = "prefix_kv"
ENCODER_PREFIX = "encoder."

# Every field a format-1 manifest carries (values may be null where noted in docs/adapters.md).
MANIFEST_FIELDS = (
    "format_version",
    "hash",
    "method",
    "num_virtual_tokens",
    "token_dim",
    "num_layers",
    "num_kv_heads",
    "head_dim",
    "dtype",
    "name",
    "version",
    "parent_hash",
    "base_model_name",
    "base_fingerprint",
    "init",
    "created_at",
    "train_dataset_hash",
    "encoder_config",
    "metadata",
    "files",
)


def utc_now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


@dataclass(eq=False)
class SoftPrompt:
    """Learned virtual tokens for ``prompt_tuning``, ``prefix_tuning`` or ``p_tuning``, plus provenance."""

    method: str
    num_virtual_tokens: int
    token_dim: int
    embeddings: Tensor | None = None  # [n, hidden]: prompt_tuning, p_tuning's encoder output
    prefix_kv: Tensor | None = None  # [layers, 2, kv_heads, n, head_dim]: prefix_tuning
    encoder_state: dict[str, Tensor] | None = None  # p_tuning encoder (training state, not identity)
    encoder_config: dict[str, Any] | None = None
    num_layers: int | None = None
    num_kv_heads: int | None = None
    head_dim: int | None = None
    name: str | None = None
    version: int | None = None
    parent_hash: str | None = None
    base_model_name: str | None = None
    base_fingerprint: str | None = None
    init: str | None = None
    created_at: str | None = None
    train_dataset_hash: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.method not in semconv.METHODS:
            raise AdapterFormatError(
                f"Unknown soft-prompt method {self.method!r}; use one of {', '.join(semconv.METHODS)}."
            )
        if int(self.num_virtual_tokens) < 1:
            raise AdapterFormatError(f"num_virtual_tokens must be at least 1, got {self.num_virtual_tokens}.")
        if self.method == semconv.METHOD_PREFIX_TUNING:
            if self.prefix_kv is None:
                raise AdapterFormatError(
                    "A prefix_tuning soft prompt needs prefix_kv; pass the key/value prefix."
                )
            if self.num_layers is None or self.num_kv_heads is None or self.head_dim is None:
                layers, _, kv_heads, _, head_dim = (list(self.prefix_kv.shape) + [None] * 5)[:5]
                self.num_layers = self.num_layers if self.num_layers is not None else layers
                self.num_kv_heads = self.num_kv_heads if self.num_kv_heads is not None else kv_heads
                self.head_dim = self.head_dim if self.head_dim is not None else head_dim
        elif self.embeddings is None:
            raise AdapterFormatError(
                f"A {self.method} soft prompt needs embeddings; pass the [n, hidden] tensor."
            )
        shape = hashing.expected_shape(self.method, **self._hash_config())
        if tuple(self.serving_tensor().shape) != shape:
            raise AdapterFormatError(
                f"The {self.method} tensor has shape {list(self.serving_tensor().shape)} but "
                f"num_virtual_tokens={self.num_virtual_tokens}, token_dim={self.token_dim} need {list(shape)}; "
                "fix the tensor or the config."
            )

    # ------------------------------------------------------------ identity

    def serving_tensor(self) -> Tensor:
        """What the runtime consumes: the embeddings, or the prefix key/values."""
        tensor = self.prefix_kv if self.method == semconv.METHOD_PREFIX_TUNING else self.embeddings
        assert tensor is not None  # checked in __post_init__
        return tensor

    def _hash_config(self) -> dict[str, Any]:
        config: dict[str, Any] = {"num_virtual_tokens": self.num_virtual_tokens, "hidden": self.token_dim}
        if self.method == semconv.METHOD_PREFIX_TUNING:
            config.update(layers=self.num_layers, kv_heads=self.num_kv_heads, head_dim=self.head_dim)
        return config

    @property
    def hash(self) -> str:
        """``sha256:<64 hex>``: see :mod:`trace_ptune.adapters.hashing` for the exact bytes.

        Computed from the tensor each time (tens of microseconds for a typical prompt), so it can
        never go stale while a trainer updates the tensor in place; read it once per use.
        """
        return hashing.adapter_hash(self.method, self.serving_tensor(), **self._hash_config())

    @property
    def hash12(self) -> str:
        return hashing.hash12(self.hash)

    @property
    def dtype(self) -> Any:
        return self.serving_tensor().dtype

    def to(self, dtype: Any = None, device: Any = None) -> SoftPrompt:
        """A copy with tensors cast/moved (the hash is unchanged by exact casts such as bf16 -> fp32)."""
        other = copy.copy(self)
        cast = lambda t: None if t is None else t.to(device=device, dtype=dtype)  # noqa: E731
        other.embeddings = cast(self.embeddings)
        other.prefix_kv = cast(self.prefix_kv)
        if self.encoder_state is not None:
            other.encoder_state = {k: cast(v) for k, v in self.encoder_state.items()}
        other.metadata = dict(self.metadata)
        return other

    # ------------------------------------------------------------ compatibility

    def check_compatible(self, base: BaseModel, *, allow_base_mismatch: bool = False) -> None:
        """Refuse a base it cannot run on; a fingerprint mismatch only when not explicitly allowed."""
        label = self.name or self.hash12
        if self.token_dim != base.hidden_size:
            raise AdapterMismatchError(
                f"Adapter {label!r} has token_dim {self.token_dim} but base {base.name!r} has hidden size "
                f"{base.hidden_size}; use the base model it was trained on."
            )
        if self.method == semconv.METHOD_PREFIX_TUNING:
            ours = (self.num_layers, self.num_kv_heads, self.head_dim)
            theirs = (base.num_layers, base.num_kv_heads, base.head_dim)
            if ours != theirs:
                raise AdapterMismatchError(
                    f"Adapter {label!r} has a prefix for (layers, kv_heads, head_dim) = {ours} but the cache of "
                    f"base {base.name!r} holds {theirs}; use the base model it was trained on (a prefix sized "
                    "from config fields, as PEFT does, misses multi-query caches such as Falcon's)."
                )
        if self.base_fingerprint and self.base_fingerprint != base.fingerprint and not allow_base_mismatch:
            raise AdapterMismatchError(
                f"Adapter {label!r} was trained on base {self.base_model_name!r} "
                f"({self.base_fingerprint[:19]}) but the loaded base {base.name!r} is {base.fingerprint[:19]}; "
                "load that base, or pass allow_base_mismatch=True (--allow-base-mismatch) to use it anyway."
            )

    # ------------------------------------------------------------ persistence

    def manifest(self, files: dict[str, str] | None = None) -> dict[str, Any]:
        """The manifest fields of this soft prompt (``files`` filled in by :meth:`save`)."""
        return {
            "format_version": FORMAT_VERSION,
            "hash": self.hash,
            "method": self.method,
            "num_virtual_tokens": int(self.num_virtual_tokens),
            "token_dim": int(self.token_dim),
            "num_layers": self.num_layers,
            "num_kv_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "dtype": str(self.dtype).removeprefix("torch."),
            "name": self.name,
            "version": self.version,
            "parent_hash": self.parent_hash,
            "base_model_name": self.base_model_name,
            "base_fingerprint": self.base_fingerprint,
            "init": self.init,
            "created_at": self.created_at,
            "train_dataset_hash": self.train_dataset_hash,
            "encoder_config": self.encoder_config,
            "metadata": self.metadata,
            "files": files or {},
        }

    def tensors(self) -> dict[str, Tensor]:
        """Everything stored in ``adapter.safetensors``, by key."""
        key = PREFIX_KV_KEY if self.method == semconv.METHOD_PREFIX_TUNING else EMBEDDINGS_KEY
        out = {key: self.serving_tensor().detach().to("cpu").contiguous()}
        for name, tensor in (self.encoder_state or {}).items():
            out[ENCODER_PREFIX + name] = tensor.detach().to("cpu").contiguous()
        return out

    def save(self, directory: str | Path) -> Path:
        """Write the artifact directory atomically (replacing an existing one); returns its path."""
        from safetensors.torch import save as save_bytes

        final = Path(directory)
        if self.created_at is None:
            self.created_at = utc_now()
        data = save_bytes(self.tensors(), metadata={"format": "pt", "hash": self.hash})
        with staging_dir(final) as tmp:
            (tmp / TENSORS_FILE).write_bytes(data)
            manifest = self.manifest({TENSORS_FILE: "sha256:" + hashlib.sha256(data).hexdigest()})
            (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
            publish_dir(tmp, final)
        return final

    @classmethod
    def load(cls, directory: str | Path, *, verify: bool = True) -> SoftPrompt:
        """Read an artifact directory; with ``verify`` (the default) refuse tampered or corrupt files."""
        root = Path(directory)
        manifest = read_manifest(root)
        tensors_path = root / TENSORS_FILE
        try:
            data = tensors_path.read_bytes()
        except FileNotFoundError:
            raise AdapterIntegrityError(
                f"The adapter at {str(root)!r} has no {TENSORS_FILE}; restore it or re-save the adapter."
            ) from None
        expected_digest = (manifest.get("files") or {}).get(TENSORS_FILE)
        if verify and expected_digest and expected_digest != "sha256:" + hashlib.sha256(data).hexdigest():
            raise AdapterIntegrityError(
                f"{str(tensors_path)!r} does not match the digest in its manifest (tampered or truncated); "
                "restore it from the store or re-export the adapter."
            )
        tensors = _read_tensors(data, tensors_path)
        method = manifest["method"]
        key = PREFIX_KV_KEY if method == semconv.METHOD_PREFIX_TUNING else EMBEDDINGS_KEY
        if key not in tensors:
            raise AdapterIntegrityError(
                f"{str(tensors_path)!r} has no {key!r} tensor; restore the file or re-export the adapter."
            )
        encoder = {k[len(ENCODER_PREFIX) :]: v for k, v in tensors.items() if k.startswith(ENCODER_PREFIX)}
        try:
            sp = cls(
                method=method,
                num_virtual_tokens=manifest["num_virtual_tokens"],
                token_dim=manifest["token_dim"],
                embeddings=tensors.get(EMBEDDINGS_KEY),
                prefix_kv=tensors.get(PREFIX_KV_KEY),
                encoder_state=encoder or None,
                encoder_config=manifest.get("encoder_config"),
                num_layers=manifest.get("num_layers"),
                num_kv_heads=manifest.get("num_kv_heads"),
                head_dim=manifest.get("head_dim"),
                name=manifest.get("name"),
                version=manifest.get("version"),
                parent_hash=manifest.get("parent_hash"),
                base_model_name=manifest.get("base_model_name"),
                base_fingerprint=manifest.get("base_fingerprint"),
                init=manifest.get("init"),
                created_at=manifest.get("created_at"),
                train_dataset_hash=manifest.get("train_dataset_hash"),
                metadata=dict(manifest.get("metadata") or {}),
            )
        except AdapterFormatError as exc:
            raise AdapterIntegrityError(f"The adapter at {str(root)!r} is inconsistent: {exc}") from None
        if verify and sp.hash != manifest["hash"]:
            raise AdapterIntegrityError(
                f"The adapter at {str(root)!r} hashes to {sp.hash12} but its manifest says "
                f"{hashing.hash12(manifest['hash'])}; the tensors were changed, restore or re-export them."
            )
        return sp


_REQUIRED_FIELDS = ("format_version", "hash", "method", "num_virtual_tokens", "token_dim", "files")


def read_manifest(directory: Path) -> dict[str, Any]:
    """Parse and check ``manifest.json``: required fields present, format version understood."""
    path = Path(directory) / MANIFEST_FILE
    if not Path(directory).is_dir():
        raise AdapterFormatError(f"No adapter directory at {str(directory)!r}; check the path.")
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise AdapterFormatError(
            f"{str(directory)!r} has no {MANIFEST_FILE}; it is not a trace-ptune adapter directory "
            "(for a PEFT adapter use import-peft)."
        ) from None
    except (ValueError, UnicodeDecodeError):
        raise AdapterIntegrityError(
            f"{str(path)!r} is not valid JSON; restore it from the store or re-export the adapter."
        ) from None
    if not isinstance(manifest, dict):
        raise AdapterFormatError(f"{str(path)!r} is not a JSON object; restore it or re-export the adapter.")
    for key in _REQUIRED_FIELDS:
        if key not in manifest:
            raise AdapterFormatError(
                f"{str(path)!r} is missing the field {key!r}; restore the manifest or re-export the adapter."
            )
    if manifest["format_version"] != FORMAT_VERSION:
        raise AdapterFormatError(
            f"{str(path)!r} has format_version {manifest['format_version']!r} but this trace-ptune reads "
            f"version {FORMAT_VERSION}; upgrade trace-ptune."
        )
    if manifest["method"] not in semconv.METHODS:
        raise AdapterFormatError(
            f"{str(path)!r} has unknown method {manifest['method']!r}; use one of {', '.join(semconv.METHODS)}."
        )
    return manifest


def _read_tensors(data: bytes, path: Path) -> dict[str, Tensor]:
    from safetensors.torch import load as load_bytes

    try:
        return load_bytes(data)
    except Exception as exc:  # safetensors raises SafetensorError / ValueError on corrupt input
        raise AdapterIntegrityError(
            f"{str(path)!r} is not a readable safetensors file ({type(exc).__name__}); "
            "restore it from the store or re-export the adapter."
        ) from None
