"""What the ``model`` field of a request serves.

In this order, the value names

1. the base model (its contract name, e.g. ``smollm2-135m``): no soft prompt;
2. a deployment in the adapter store (``acme/support@prod``): its primary adapter, or its canary
   for ``canary_percent`` of requests, picked by a stable hash of the request id (send
   ``X-Request-Id`` to make a client sticky); a server started with a canary seed picks at random
   from that seed instead;
3. an adapter: ``name`` (latest version), ``name@version``, a full hash or a prefix of at least 12
   hex digits.

Anything else is a 404 naming the value. Resolutions are cached and the cache is dropped when the
store's change marker (:meth:`AdapterStore.state_version`, a few ``stat`` calls) moves, so
``trace-ptune adapters promote`` / ``rollback`` and newly saved versions reach a running server
on its next request, without a restart.
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass
from typing import Any

from trace_ptune.errors import AdapterNotFoundError, ConfigError, TracePtuneError
from trace_ptune.runtime.registry import canary_bucket
from trace_ptune.runtime.server.auth import deployment_owner, name_owner
from trace_ptune.runtime.server.openai_schema import RequestError


@dataclass(frozen=True)
class Target:
    """What one ``model`` value resolves to, before the canary pick."""

    kind: str  # "base" | "deployment" | "adapter"
    owner: str | None
    adapter_hash: str | None = None
    adapter_name: str | None = None
    deployment: str | None = None
    canary_hash: str | None = None
    canary_percent: float = 0.0


@dataclass(frozen=True)
class Route:
    """What one request is served with."""

    model: str  # the request's model field, echoed in responses
    kind: str
    owner: str | None
    adapter_hash: str | None
    deployment: str | None
    canary: bool = False


class Router:
    """Resolve ``model`` values against the base model and an adapter store, with hot reload."""

    def __init__(
        self,
        store: Any,
        base_name: str,
        *,
        base_fingerprint: str | None = None,
        poll_interval_s: float = 0.0,
        canary_seed: int | None = None,
    ) -> None:
        self.store = store
        self.base_name = base_name
        self.base_fingerprint = base_fingerprint
        self.poll_interval_s = poll_interval_s
        self._rng = random.Random(canary_seed) if canary_seed is not None else None
        self._lock = threading.Lock()
        self._marker: str | None = None
        self._checked_at = 0.0
        self._cache: dict[str, Target] = {}
        self.reloads = 0

    # ------------------------------------------------------------------ hot reload
    def refresh(self, *, force: bool = False) -> bool:
        """Drop cached resolutions if the store changed; True when it did."""
        now = time.monotonic()
        with self._lock:
            if not force and now - self._checked_at < self.poll_interval_s:
                return False
            self._checked_at = now
            marker = self.store.state_version()
            if marker == self._marker and not force:
                return False
            changed = self._marker is not None
            self._marker = marker
            self._cache.clear()
            if changed:
                self.reloads += 1
            return changed

    # ------------------------------------------------------------------ resolution
    def target(self, model: str) -> Target:
        self.refresh()
        with self._lock:
            cached = self._cache.get(model)
        if cached is not None:
            return cached
        target = self._resolve(model)
        with self._lock:
            self._cache[model] = target
        return target

    def route(self, model: str, request_id: str) -> Route:
        target = self.target(model)
        adapter_hash, canary = target.adapter_hash, False
        if target.canary_hash and target.canary_percent > 0:
            roll = self._rng.random() * 100 if self._rng is not None else canary_bucket(request_id)
            if roll < target.canary_percent:
                adapter_hash, canary = target.canary_hash, True
        return Route(
            model=model,
            kind=target.kind,
            owner=target.owner,
            adapter_hash=adapter_hash,
            deployment=target.deployment,
            canary=canary,
        )

    def _resolve(self, model: str) -> Target:
        if model == self.base_name:
            return Target(kind="base", owner=None)
        try:
            record = self.store.deployment(model)
        except TracePtuneError:
            record = None
        if record and record.get("adapter_hash"):
            return Target(
                kind="deployment",
                owner=deployment_owner(model, record),
                adapter_hash=record["adapter_hash"],
                deployment=model,
                canary_hash=record.get("canary_hash"),
                canary_percent=float(record.get("canary_percent") or 0.0),
            )
        try:
            adapter_hash, name, _version = self.store.resolve_hash(model)
        except (AdapterNotFoundError, ConfigError):
            raise RequestError(
                404,
                f"The model {model!r} does not exist: name the base model {self.base_name!r}, a deployment, "
                "an adapter (name or name@version) or a stored adapter hash; GET /v1/models lists them.",
                param="model",
                code="model_not_found",
            ) from None
        return Target(
            kind="adapter",
            owner=name_owner(name) if name else None,
            adapter_hash=adapter_hash,
            adapter_name=name,
            # a deployment defaults to the adapter's name (the span contract)
            deployment=name,
        )

    # ------------------------------------------------------------------ listing
    def models(self) -> list[dict[str, Any]]:
        """``/v1/models`` rows: the base model, every deployment, every stored adapter version."""
        created = int(time.time())
        rows: list[dict[str, Any]] = [
            {"id": self.base_name, "object": "model", "created": created, "owned_by": "base", "kind": "base"}
        ]
        for dep in self.store.deployments():
            if not dep.get("adapter_hash"):
                continue
            rows.append(
                {
                    "id": dep["deployment"],
                    "object": "model",
                    "created": created,
                    "owned_by": deployment_owner(dep["deployment"], dep) or "shared",
                    "kind": "deployment",
                    "adapter_hash": dep["adapter_hash"],
                    "canary_hash": dep.get("canary_hash"),
                    "canary_percent": dep.get("canary_percent"),
                }
            )
        for row in self.store.list():
            fingerprint = row.get("base_fingerprint")
            if fingerprint and self.base_fingerprint and fingerprint != self.base_fingerprint:
                continue  # trained for another base: this server cannot serve it
            ident = f"{row['name']}@{row['version']}"
            rows.append(
                {
                    "id": ident,
                    "object": "model",
                    "created": created,
                    "owned_by": name_owner(row["name"]) or "shared",
                    "kind": "adapter",
                    "adapter_hash": row["hash"],
                    "latest": row.get("latest", False),
                }
            )
        return rows
