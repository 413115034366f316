"""Adapters loaded into one engine: lookup by name, ``name@version``, hash or deployment, with a
memory budget and least-recently-used eviction of unpinned adapters.

An entry is keyed by its adapter hash; names are aliases that point at a hash. Registering a
name again with other tensors moves the alias to the new hash, and the prompt-KV cache is keyed
by hash, so the old prefix is never served for the name. The bytes counted against the budget
are the serving tensor plus its cached prefix K/V.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from trace_ptune import semconv
from trace_ptune.errors import (
    AdapterError,
    AdapterMismatchError,
    AdapterNotFoundError,
    TracePtuneError,
)
from trace_ptune.runtime.kvcache import PromptKVCache, compute_prefix_kv

logger = logging.getLogger(__name__)

_HASH_RE = re.compile(r"^(sha256:)?[0-9a-f]{12,64}$")


@dataclass
class AdapterEntry:
    """One loaded adapter."""

    adapter: Any  # SoftPrompt (or any object with its serving fields)
    hash: str
    names: set[str] = field(default_factory=set)
    pinned: bool = False
    last_used: int = 0
    tensor_bytes: int = 0

    @property
    def method(self) -> str:
        return self.adapter.method

    @property
    def num_virtual_tokens(self) -> int:
        return int(self.adapter.num_virtual_tokens)

    @property
    def name(self) -> str | None:
        return getattr(self.adapter, "name", None) or (sorted(self.names)[0] if self.names else None)

    @property
    def version(self) -> int | None:
        return getattr(self.adapter, "version", None)


class AdapterRegistry:
    """Adapters of one base model. Thread-safe."""

    def __init__(
        self,
        base: Any,
        *,
        store: Any | None = None,
        memory_budget_mb: float | None = 1024.0,
        allow_base_mismatch: bool = False,
    ) -> None:
        self.base = base
        self._store = store
        self.memory_budget_bytes = None if memory_budget_mb is None else int(memory_budget_mb * 2**20)
        self.allow_base_mismatch = allow_base_mismatch
        self.kv_cache = PromptKVCache()
        self._entries: dict[str, AdapterEntry] = {}
        self._names: dict[str, str] = {}  # alias (name or name@version) -> hash
        self._clock = itertools.count(1)
        self._lock = threading.RLock()
        self.evictions = 0

    # ------------------------------------------------------------------ store
    @property
    def store(self) -> Any:
        if self._store is None:
            from trace_ptune.adapters.store import AdapterStore

            self._store = AdapterStore()
        return self._store

    # ------------------------------------------------------------------ registration
    def register(self, adapter: Any, *, name: str | None = None, pin: bool = False) -> AdapterEntry:
        """Load ``adapter`` (a SoftPrompt, a store reference, or an adapter directory)."""
        sp = self._load(adapter)
        self.check_compatible(sp)
        with self._lock:
            entry = self._entry(sp)
            entry.pinned = entry.pinned or pin
            entry.last_used = next(self._clock)
            for alias in _aliases(sp, name):
                old = self._names.get(alias)
                if old is not None and old != sp.hash and old in self._entries:
                    self._entries[old].names.discard(alias)
                self._names[alias] = sp.hash
                entry.names.add(alias)
            try:
                self._enforce_budget(keep=sp.hash)
            except AdapterError:
                self._remove(sp.hash)
                raise
            return entry

    def unregister(self, ref: str) -> None:
        """Unload one adapter (by name, ``name@version`` or hash) and its cached prefix."""
        with self._lock:
            entry = self._lookup_local(ref)
            if entry is None:
                raise AdapterNotFoundError(
                    f"no adapter {ref!r} is loaded; see `registry.list()` for what is."
                )
            self._remove(entry.hash)

    def pin(self, ref: str, pinned: bool = True) -> None:
        with self._lock:
            entry = self._lookup_local(ref)
            if entry is None:
                raise AdapterNotFoundError(f"no adapter {ref!r} is loaded; register it first.")
            entry.pinned = pinned

    def list(self) -> list[dict[str, Any]]:
        with self._lock:
            return [
                {
                    "hash": e.hash,
                    "names": sorted(e.names),
                    "method": e.method,
                    "num_virtual_tokens": e.num_virtual_tokens,
                    "pinned": e.pinned,
                    "bytes": e.tensor_bytes + self.kv_cache.nbytes(e.hash),
                    "kv_cached": (e.hash, self.base.fingerprint) in self.kv_cache,
                }
                for e in sorted(self._entries.values(), key=lambda e: -e.last_used)
            ]

    def __contains__(self, ref: str) -> bool:
        with self._lock:
            return self._lookup_local(ref) is not None

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def nbytes(self) -> int:
        with self._lock:
            return sum(e.tensor_bytes for e in self._entries.values()) + self.kv_cache.nbytes()

    # ------------------------------------------------------------------ lookup
    def resolve(self, ref: str) -> AdapterEntry:
        """The loaded adapter ``ref`` names; loads it from the store on a miss."""
        with self._lock:
            entry = self._lookup_local(ref)
            if entry is not None:
                entry.last_used = next(self._clock)
                return entry
        try:
            store = self.store
            resolve_hash = getattr(store, "resolve_hash", None)
            if resolve_hash is not None:
                # Names are the store's to define: ask it which hash a reference means now (no
                # tensor read), and load the tensors only when that hash is not loaded yet.
                adapter_hash = resolve_hash(ref)[0]
                with self._lock:
                    entry = self._entries.get(adapter_hash)
                    if entry is not None:
                        entry.last_used = next(self._clock)
                        return entry
            sp = store.resolve(ref)
        except TracePtuneError:
            raise
        except (ImportError, AttributeError) as exc:  # no store available
            raise AdapterNotFoundError(
                f"adapter {ref!r} is not registered and no adapter store is available ({exc})."
            ) from None
        self.check_compatible(sp)
        with self._lock:
            # Loaded by reference: keyed by hash only, so the store stays the authority on
            # what a name means (a newer version saved there is picked up on the next call).
            new = sp.hash not in self._entries
            entry = self._entry(sp)
            if new:
                self._enforce_budget(keep=sp.hash)
            entry.last_used = next(self._clock)
            return entry

    def deployment_target(self, deployment: str, routing_key: str) -> str | None:
        """The adapter hash a store deployment serves for this routing key (canary aware)."""
        try:
            info = self.store.deployment(deployment)
        except (ImportError, AttributeError):
            return None
        if not info:
            return None
        canary, percent = info.get("canary_hash"), info.get("canary_percent") or 0
        if canary and percent > 0 and canary_bucket(routing_key) < percent:
            return canary
        return info.get("adapter_hash")

    def _lookup_local(self, ref: str) -> AdapterEntry | None:
        h = self._names.get(ref)
        if h is not None:
            return self._entries.get(h)
        entry = self._entries.get(ref)  # a full "sha256:<hex>" hash: no scan
        if entry is not None:
            return entry
        if _HASH_RE.match(ref):
            digits = ref.removeprefix("sha256:")
            matches = [e for h, e in self._entries.items() if h.removeprefix("sha256:").startswith(digits)]
            if len(matches) == 1:
                return matches[0]
        return None

    # ------------------------------------------------------------------ prefix K/V
    def prefix_kv(self, entry: AdapterEntry) -> torch.Tensor:
        """The entry's K/V prefix, computed once per (hash, base fingerprint)."""
        fingerprint = self.base.fingerprint
        kv = self.kv_cache.get(entry.hash, fingerprint)
        if kv is None:
            kv = compute_prefix_kv(self.base.model, entry.adapter)
            with self._lock:
                # An adapter unloaded meanwhile is served this once but not cached.
                if self._entries.get(entry.hash) is entry:
                    self.kv_cache.put(entry.hash, fingerprint, kv)
                    try:
                        self._enforce_budget(keep=entry.hash)
                    except AdapterError:  # pinned adapters fill the budget: serve uncached
                        self.kv_cache.drop(entry.hash)
        return kv

    # ------------------------------------------------------------------ checks
    def check_compatible(self, sp: Any) -> None:
        """Refuse an adapter trained for another base (unless overridden) or of the wrong shape."""
        if sp.method not in semconv.METHODS:
            raise AdapterMismatchError(
                f"adapter method {sp.method!r} is not one of {', '.join(semconv.METHODS)}."
            )
        check = getattr(sp, "check_compatible", None)
        if check is not None:
            check(self.base, allow_base_mismatch=self.allow_base_mismatch)
        else:
            fp = getattr(sp, "base_fingerprint", None)
            if fp and fp != self.base.fingerprint and not self.allow_base_mismatch:
                raise AdapterMismatchError(
                    f"adapter {_label(sp)} was trained on base {fp[:19]}, not {self.base.fingerprint[:19]};"
                    " load it on its own base or pass allow_base_mismatch=True."
                )
        layers, kv_heads, head_dim = self.base.kv_layout
        n = int(sp.num_virtual_tokens)
        if sp.method == semconv.METHOD_PREFIX_TUNING:
            want: tuple[int, ...] = (layers, 2, kv_heads, n, head_dim)
            got = tuple(sp.prefix_kv.shape) if sp.prefix_kv is not None else None
        else:
            want = (n, self.base.model.config.hidden_size)
            got = tuple(sp.embeddings.shape) if sp.embeddings is not None else None
        if got != want:
            raise AdapterMismatchError(
                f"adapter {_label(sp)} has serving tensor shape {got}, but this base needs {want};"
                " it was made for another model."
            )

    # ------------------------------------------------------------------ internals
    def _load(self, adapter: Any) -> Any:
        if isinstance(adapter, Path) or (isinstance(adapter, str) and Path(adapter).is_dir()):
            from trace_ptune.adapters.artifact import SoftPrompt

            return SoftPrompt.load(Path(adapter))
        if isinstance(adapter, str):
            return self.store.resolve(adapter)
        if not hasattr(adapter, "method") or not hasattr(adapter, "hash"):
            raise AdapterError(
                f"cannot register {type(adapter).__name__}; pass a SoftPrompt, a store reference or a directory."
            )
        return adapter

    def _entry(self, sp: Any) -> AdapterEntry:
        """The entry of ``sp``, created (unpinned, unnamed) if new; call under the lock."""
        entry = self._entries.get(sp.hash)
        if entry is None:
            entry = AdapterEntry(adapter=sp, hash=sp.hash, tensor_bytes=_serving_bytes(sp))
            self._entries[sp.hash] = entry
        return entry

    def _remove(self, adapter_hash: str) -> None:
        entry = self._entries.pop(adapter_hash, None)
        if entry is None:
            return
        for alias in entry.names:
            if self._names.get(alias) == adapter_hash:
                del self._names[alias]
        self.kv_cache.drop(adapter_hash)

    def _enforce_budget(self, *, keep: str) -> None:
        if self.memory_budget_bytes is None:
            return
        while self.nbytes > self.memory_budget_bytes:
            victims = [e for e in self._entries.values() if not e.pinned and e.hash != keep]
            if not victims:
                raise AdapterError(
                    f"adapter {keep[:19]} does not fit the memory budget of "
                    f"{self.memory_budget_bytes / 2**20:.1f} MiB beside the pinned adapters;"
                    " raise memory_budget_mb or unpin some."
                )
            victim = min(victims, key=lambda e: e.last_used)
            logger.info("evicting adapter %s (least recently used)", victim.hash[:19])
            self._remove(victim.hash)
            self.evictions += 1


def _serving_bytes(sp: Any) -> int:
    t = sp.prefix_kv if sp.method == semconv.METHOD_PREFIX_TUNING else sp.embeddings
    return 0 if t is None else t.numel() * t.element_size()


def _aliases(sp: Any, name: str | None) -> list[str]:
    """The caller's name, plus the artifact's own name and ``name@version``."""
    own, version = getattr(sp, "name", None), getattr(sp, "version", None)
    out = [n for n in dict.fromkeys((name, own)) if n]
    if own and version is not None:
        out.append(f"{own}@{version}")
    return out


def _label(sp: Any) -> str:
    name = getattr(sp, "name", None)
    return f"{name!r} ({sp.hash[:19]})" if name else sp.hash[:19]


def canary_bucket(routing_key: str) -> float:
    """A stable number in [0, 100) for a routing key (a request id): the key is in the canary
    when this is below ``canary_percent``. The engine and the server share it, so one request id
    lands on the same side through either."""
    digest = hashlib.sha256(routing_key.encode()).digest()
    return int.from_bytes(digest[:8], "big") % 10_000 / 100.0
