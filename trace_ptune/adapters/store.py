"""The local adapter store: content-addressed artifacts, named versions, lineage, deployments.

Layout under the root (default ``$TRACE_PTUNE_HOME/adapters``)::

    objects/<64 hex>/        one artifact directory per adapter hash (never rewritten)
    index.json               {"names": {name: [{"version", "hash", "saved_at"}, ...]}}
    deployments.json         {"deployments": {name: current state + undo "history"},
                              "log": {name: [every state, oldest first]}, "counter": n}
    .lock                    fcntl lock every writer holds

Every write happens under the lock and lands by atomic rename, so trainers, DDP ranks and a
hot-reloading server can share one store. Saving the same hash again under a name is a no-op.

References (:meth:`AdapterStore.resolve`) are tried in this order: ``name@version``; an adapter
name (its latest version); a deployment name (its primary adapter); a full hash or a hash prefix
of at least 12 hex digits (with or without ``sha256:``).

Deployments: :meth:`AdapterStore.promote` makes an adapter the primary of a deployment, or with
``canary_percent`` adds it beside the current primary at that share of traffic;
:meth:`AdapterStore.rollback` restores the state before the last change. Both emit a
``ptune.rollout`` span. :meth:`AdapterStore.state_version` is a cheap change marker for servers
that hot-reload.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from trace_ptune import paths, semconv
from trace_ptune.adapters._fs import atomic_write_json, file_lock, publish_dir, staging_dir
from trace_ptune.adapters.artifact import MANIFEST_FILE, SoftPrompt, read_manifest, utc_now
from trace_ptune.errors import AdapterFormatError, AdapterNotFoundError, ConfigError

NAME_PATTERN = re.compile(r"^[A-Za-z0-9._/-]+$")
DEPLOYMENT_PATTERN = re.compile(r"^[A-Za-z0-9._/@-]+$")
_HEX = re.compile(r"^[0-9a-f]+$")
MIN_PREFIX = 12


def validate_name(name: str) -> str:
    """Adapter names match ``[A-Za-z0-9._/-]+`` (no ``@``, no ``+``)."""
    if not isinstance(name, str) or not NAME_PATTERN.match(name) or name.startswith("/") or ".." in name:
        raise ConfigError(
            f"Invalid adapter name {name!r}; use letters, digits and . _ / - only (no '@' or '+')."
        )
    return name


def validate_deployment(deployment: str) -> str:
    """Deployment names match ``[A-Za-z0-9._/@-]+`` (e.g. ``acme/support@prod``)."""
    if not isinstance(deployment, str) or not DEPLOYMENT_PATTERN.match(deployment):
        raise ConfigError(f"Invalid deployment name {deployment!r}; use letters, digits and . _ / @ - only.")
    return deployment


class AdapterStore:
    """A content-addressed soft-prompt store shared safely between processes."""

    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root) if root is not None else paths.adapters_dir()

    # ------------------------------------------------------------ files

    @property
    def objects_dir(self) -> Path:
        return self.root / "objects"

    @property
    def _index_file(self) -> Path:
        return self.root / "index.json"

    @property
    def _deployments_file(self) -> Path:
        return self.root / "deployments.json"

    def _lock(self) -> Any:
        return file_lock(self.root / ".lock")

    def _read(self, path: Path, empty: dict[str, Any]) -> dict[str, Any]:
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return empty
        except ValueError:
            raise AdapterFormatError(
                f"The store file {str(path)!r} is not valid JSON; restore it from a backup."
            ) from None
        return data if isinstance(data, dict) else empty

    def _index(self) -> dict[str, list[dict[str, Any]]]:
        return self._read(self._index_file, {"names": {}}).setdefault("names", {})

    def _deployments(self) -> dict[str, Any]:
        data = self._read(self._deployments_file, {"deployments": {}, "counter": 0})
        data.setdefault("deployments", {})
        data.setdefault("counter", 0)
        data.setdefault("log", {})
        return data

    def object_dir(self, adapter_hash: str) -> Path:
        return self.objects_dir / adapter_hash.removeprefix("sha256:")

    def state_version(self) -> str:
        """Changes whenever names, versions or deployments change (a few ``stat`` calls)."""
        parts = []
        for path in (self._index_file, self._deployments_file):
            try:
                st = os.stat(path)
                parts.append(f"{st.st_ino}:{st.st_mtime_ns}:{st.st_size}")
            except FileNotFoundError:
                parts.append("-")
        return "|".join(parts)

    # ------------------------------------------------------------ save

    def save(self, sp: SoftPrompt, name: str | None = None) -> SoftPrompt:
        """Store ``sp`` under ``name`` (default ``sp.name``) as its next version.

        Saving a hash the name already has is a no-op that returns that version.
        """
        name = validate_name(name or sp.name or "")
        adapter_hash = sp.hash
        with self._lock():
            data = self._read(self._index_file, {"names": {}})
            versions = data.setdefault("names", {}).setdefault(name, [])
            for entry in versions:
                if entry["hash"] == adapter_hash:
                    return self._with_identity(sp, name, entry["version"])
            version = max((e["version"] for e in versions), default=0) + 1
            stored = self._with_identity(sp, name, version)
            target = self.object_dir(adapter_hash)
            if not (target / MANIFEST_FILE).is_file():
                with staging_dir(target) as tmp:
                    stored.save(tmp / "artifact")
                    publish_dir(tmp / "artifact", target)
            versions.append({"version": version, "hash": adapter_hash, "saved_at": utc_now()})
            atomic_write_json(self._index_file, data)
        return stored

    @staticmethod
    def _with_identity(sp: SoftPrompt, name: str, version: int) -> SoftPrompt:
        out = sp.to()
        out.name, out.version = name, version
        return out

    # ------------------------------------------------------------ resolve

    def resolve_hash(self, ref: str) -> tuple[str, str | None, int | None]:
        """``(hash, name, version)`` for a reference, without loading tensors."""
        ref = str(ref).strip()
        index = self._index()
        if "@" in ref:
            name, _, version = ref.rpartition("@")
            if version.isdigit():
                for entry in index.get(name, []):
                    if entry["version"] == int(version):
                        return entry["hash"], name, entry["version"]
                known = ", ".join(str(e["version"]) for e in index.get(name, [])) or "none"
                raise AdapterNotFoundError(
                    f"No adapter {ref!r} in the store (versions of {name!r}: {known}); "
                    "run `trace-ptune adapters list` to see what is stored."
                )
        if index.get(ref):
            entry = index[ref][-1]
            return entry["hash"], ref, entry["version"]
        state = self._deployments()["deployments"].get(ref)
        if state and state.get("adapter_hash"):
            return self._identify(state["adapter_hash"], index)
        hex_part = ref.removeprefix("sha256:").lower()
        if _HEX.match(hex_part):
            if len(hex_part) < MIN_PREFIX:
                raise AdapterNotFoundError(
                    f"No adapter named {ref!r}, and as a hash prefix it is too short; "
                    f"give at least {MIN_PREFIX} hex digits."
                )
            matches = sorted(p.name for p in self._object_dirs() if p.name.startswith(hex_part))
            if len(matches) > 1:
                raise AdapterNotFoundError(
                    f"The hash prefix {ref!r} matches {len(matches)} adapters "
                    f"({', '.join(m[:16] for m in matches[:4])}); give more digits."
                )
            if matches:
                return self._identify("sha256:" + matches[0], index)
        raise AdapterNotFoundError(
            f"No adapter, version, deployment or hash matches {ref!r}; "
            "run `trace-ptune adapters list` to see what is stored."
        )

    def _identify(self, adapter_hash: str, index: dict[str, Any]) -> tuple[str, str | None, int | None]:
        for name in sorted(index):
            for entry in index[name]:
                if entry["hash"] == adapter_hash:
                    return adapter_hash, name, entry["version"]
        return adapter_hash, None, None

    def _object_dirs(self) -> list[Path]:
        if not self.objects_dir.is_dir():
            return []
        return [p for p in self.objects_dir.iterdir() if p.is_dir() and not p.name.startswith(".")]

    def resolve(self, ref: str, *, verify: bool = True) -> SoftPrompt:
        """Load the adapter a reference points at (checked against its hash)."""
        adapter_hash, name, version = self.resolve_hash(ref)
        sp = SoftPrompt.load(self.object_dir(adapter_hash), verify=verify)
        if name is not None:
            sp.name, sp.version = name, version
        return sp

    def path(self, ref: str) -> Path:
        """The artifact directory a reference points at."""
        return self.object_dir(self.resolve_hash(ref)[0])

    # ------------------------------------------------------------ listing

    def list(self) -> list[dict[str, Any]]:
        """One row per (name, version), sorted by name then version; reads manifests only."""
        index = self._index()
        deployments = self._deployments()["deployments"]
        serving: dict[str, list[str]] = {}
        for dep, state in sorted(deployments.items()):
            for key in ("adapter_hash", "canary_hash"):
                if state.get(key):
                    serving.setdefault(state[key], []).append(dep)
        rows = []
        for name in sorted(index):
            versions = index[name]
            latest = max(e["version"] for e in versions)
            for entry in versions:
                try:
                    manifest = read_manifest(self.object_dir(entry["hash"]))
                except AdapterFormatError:
                    manifest = {}
                rows.append(self._row(name, entry, manifest, latest, serving.get(entry["hash"], [])))
        return rows

    @staticmethod
    def _row(
        name: str, entry: dict[str, Any], manifest: dict[str, Any], latest: int, deployments: list[str]
    ) -> dict[str, Any]:
        return {
            "name": name,
            "version": entry["version"],
            "hash": entry["hash"],
            "hash12": entry["hash"].removeprefix("sha256:")[:12],
            "method": manifest.get("method"),
            "num_virtual_tokens": manifest.get("num_virtual_tokens"),
            "token_dim": manifest.get("token_dim"),
            "dtype": manifest.get("dtype"),
            "base_model_name": manifest.get("base_model_name"),
            "base_fingerprint": manifest.get("base_fingerprint"),
            "parent_hash": manifest.get("parent_hash"),
            "train_dataset_hash": manifest.get("train_dataset_hash"),
            "created_at": manifest.get("created_at"),
            "saved_at": entry.get("saved_at"),
            "latest": entry["version"] == latest,
            "deployments": deployments,
        }

    def describe(self, ref: str) -> dict[str, Any]:
        """The manifest of the referenced adapter plus its store identity and path."""
        adapter_hash, name, version = self.resolve_hash(ref)
        directory = self.object_dir(adapter_hash)
        manifest = read_manifest(directory)
        manifest.update(name=name, version=version, hash12=adapter_hash.removeprefix("sha256:")[:12])
        manifest["path"] = str(directory)
        return manifest

    def lineage(self, ref: str) -> list[dict[str, Any]]:
        """The adapter and its ancestors (by ``parent_hash``) that the store holds, newest first."""
        chain: list[dict[str, Any]] = []
        seen: set[str] = set()
        current: str | None = self.resolve_hash(ref)[0]
        while current and current not in seen and self.object_dir(current).is_dir():
            seen.add(current)
            info = self.describe(current)
            chain.append(info)
            current = info.get("parent_hash")
        return chain

    # ------------------------------------------------------------ deployments

    def deployment(self, deployment: str) -> dict[str, Any] | None:
        """The current state of a deployment, or ``None``."""
        state = self._deployments()["deployments"].get(deployment)
        return _public_state(deployment, state) if state else None

    def deployments(self) -> list[dict[str, Any]]:
        """Current state of every deployment, sorted by name."""
        data = self._deployments()["deployments"]
        return [_public_state(name, data[name]) for name in sorted(data)]

    def deployment_history(self, deployment: str) -> list[dict[str, Any]]:
        """Every state the deployment has had, oldest first, the current one last (an audit log).

        :meth:`rollback` walks back through a separate undo stack (``rollback_depth`` states deep).
        """
        return [_public_state(deployment, s) for s in self._deployments()["log"].get(deployment, [])]

    def promote(
        self,
        ref: str,
        deployment: str | None = None,
        *,
        canary_percent: float | None = None,
        tenant: str | None = None,
    ) -> dict[str, Any]:
        """Serve ``ref`` on ``deployment`` (default: the adapter's name); emits ``ptune.rollout``.

        Without ``canary_percent`` the adapter replaces the primary (and any canary). With it, the
        current primary stays and the adapter is added as a canary taking that share of traffic.
        """
        adapter_hash, name, version = self.resolve_hash(ref)
        deployment = validate_deployment(deployment or name or "")
        if canary_percent is not None and not 0 < float(canary_percent) < 100:
            raise ConfigError(f"Canary percent must be between 0 and 100 (exclusive), got {canary_percent}.")
        with self._lock():
            data = self._deployments()
            current = data["deployments"].get(deployment)
            previous_hash = current.get("adapter_hash") if current else None
            if canary_percent is not None:
                if not previous_hash:
                    raise ConfigError(
                        f"Deployment {deployment!r} has no primary adapter to canary against; "
                        "promote one without a canary percent first."
                    )
                new = {"adapter_hash": previous_hash, "canary_hash": adapter_hash,
                       "canary_percent": float(canary_percent)}  # fmt: skip
            else:
                new = {"adapter_hash": adapter_hash, "canary_hash": None, "canary_percent": None}
            new.update(tenant=tenant if tenant is not None else (current or {}).get("tenant"),
                       updated_at=utc_now(), action="canary" if canary_percent is not None else "promote")  # fmt: skip
            history = list((current or {}).get("history", []))
            if current:
                history.append({k: v for k, v in current.items() if k != "history"})
            new["history"] = history
            data["deployments"][deployment] = new
            data["log"].setdefault(deployment, []).append({k: v for k, v in new.items() if k != "history"})
            data["counter"] += 1
            atomic_write_json(self._deployments_file, data)
        self._rollout_span(deployment, new, adapter_hash, previous_hash, name, version)
        return _public_state(deployment, new)

    def rollback(self, deployment: str) -> dict[str, Any]:
        """Restore the deployment's state before its last change; emits ``ptune.rollout``."""
        with self._lock():
            data = self._deployments()
            current = data["deployments"].get(deployment)
            if not current:
                raise AdapterNotFoundError(
                    f"No deployment {deployment!r}; run `trace-ptune adapters deployments` to list them."
                )
            history = list(current.get("history", []))
            if not history:
                raise ConfigError(
                    f"Deployment {deployment!r} has no earlier state to roll back to; promote another adapter instead."
                )
            restored = dict(history.pop())
            restored.update(updated_at=utc_now(), action="rollback", history=history)
            data["deployments"][deployment] = restored
            data["log"].setdefault(deployment, []).append(
                {k: v for k, v in restored.items() if k != "history"}
            )
            data["counter"] += 1
            atomic_write_json(self._deployments_file, data)
        new_hash = restored.get("canary_hash") or restored["adapter_hash"]
        left_hash = current.get("canary_hash") or current.get("adapter_hash")
        _, name, version = self._identify(new_hash, self._index())
        self._rollout_span(deployment, restored, new_hash, left_hash, name, version)
        return _public_state(deployment, restored)

    def _rollout_span(
        self,
        deployment: str,
        state: dict[str, Any],
        adapter_hash: str,
        previous_hash: str | None,
        name: str | None,
        version: int | None,
    ) -> None:
        from trace_ptune.telemetry import get_tracer

        attributes: dict[str, Any] = {
            semconv.PTUNE_DEPLOYMENT: deployment,
            semconv.PTUNE_ADAPTER_HASH: adapter_hash,
            semconv.PTUNE_ROLLOUT_ACTION: state["action"],
        }
        optional = {
            semconv.PTUNE_TENANT: state.get("tenant"),
            semconv.PTUNE_ADAPTER_PREVIOUS_HASH: previous_hash,
            semconv.PTUNE_ADAPTER_NAME: name,
            semconv.PTUNE_ADAPTER_VERSION: version,
            semconv.PTUNE_ROLLOUT_CANARY_PERCENT: state.get("canary_percent"),
        }
        attributes.update({k: v for k, v in optional.items() if v is not None})
        with get_tracer().start_as_current_span(semconv.SPAN_ROLLOUT, attributes=attributes):
            pass


def _public_state(deployment: str, state: dict[str, Any]) -> dict[str, Any]:
    primary = state.get("adapter_hash")
    canary = state.get("canary_hash")
    return {
        "deployment": deployment,
        "adapter_hash": primary,
        "adapter_hash12": primary.removeprefix("sha256:")[:12] if primary else None,
        "canary_hash": canary,
        "canary_percent": state.get("canary_percent"),
        "tenant": state.get("tenant"),
        "action": state.get("action"),
        "updated_at": state.get("updated_at"),
        "rollback_depth": len(state.get("history", [])),
    }
