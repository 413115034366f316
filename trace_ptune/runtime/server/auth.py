"""Who is calling: API keys to tenants, and which deployments a tenant may use.

The key file (``--api-keys FILE``) is either JSON or plain text:

- JSON: ``{"sk-acme-1": "acme", ...}``, ``{"keys": {"sk-acme-1": "acme"}}`` or
  ``[{"key": "sk-acme-1", "tenant": "acme"}, ...]``;
- text: one ``KEY TENANT`` pair per line; blank lines and ``#`` comments are skipped.

Clients send the key as ``Authorization: Bearer KEY`` (what OpenAI clients do). With keys on, the
key alone decides the tenant; an ``X-Tenant`` header is ignored. Without keys the tenant comes
from ``X-Tenant``, else from the W3C baggage entry ``ptune.tenant``, else it is unset.

Ownership (enforced only with keys on):

- a deployment belongs to the tenant recorded when it was promoted (``promote --tenant``), else to
  the part of its name before the first ``/`` (``acme/support@prod`` belongs to ``acme``); a
  deployment with neither belongs to nobody and only the base model stays open to every tenant;
- an adapter named directly (``name``, ``name@version`` or a hash) belongs to the part of its name
  before the first ``/``; so ``acme/support@3`` is open to ``acme`` only;
- the base model is open to every tenant.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from pathlib import Path

from opentelemetry import baggage
from opentelemetry.context import Context

from trace_ptune import semconv
from trace_ptune.errors import ConfigError
from trace_ptune.runtime.server.openai_schema import RequestError

TENANT_HEADER = "x-tenant"
_TENANT_RE = re.compile(r"^[A-Za-z0-9._-]+$")


def _digest(key: str) -> str:
    # Keys are held and compared as digests: the plain keys stay out of memory dumps and logs.
    return hashlib.sha256(key.encode()).hexdigest()


class ApiKeys:
    """A map from API key to tenant, loaded from ``--api-keys FILE``."""

    def __init__(self, mapping: Mapping[str, str]) -> None:
        if not mapping:
            raise ConfigError("The API key file holds no keys; add 'KEY TENANT' lines or drop --api-keys.")
        for key, tenant in mapping.items():
            _check_pair(key, tenant, where="")
        self._tenants = {_digest(k): t for k, t in mapping.items()}

    def __len__(self) -> int:
        return len(self._tenants)

    def tenant_for(self, key: str) -> str | None:
        return self._tenants.get(_digest(key))

    @classmethod
    def load(cls, path: str | Path) -> ApiKeys:
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(
                f"Cannot read the API key file {str(path)!r} ({exc.strerror}); check --api-keys."
            ) from None
        return cls(parse_api_keys(text, source=str(path)))


def _check_pair(key: object, tenant: object, *, where: str) -> None:
    if not isinstance(key, str) or not key or any(c.isspace() for c in key):
        raise ConfigError(f"Bad API key {key!r}{where}: keys are non-empty strings without spaces.")
    if not isinstance(tenant, str) or not _TENANT_RE.match(tenant):
        raise ConfigError(f"Bad tenant {tenant!r}{where}: tenants match [A-Za-z0-9._-]+.")


def parse_api_keys(text: str, *, source: str = "<keys>") -> dict[str, str]:
    """Parse a key file (JSON or ``KEY TENANT`` lines) into ``{key: tenant}``."""
    stripped = text.lstrip()
    if stripped.startswith(("{", "[")):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"The API key file {source!r} is not valid JSON ({exc}).") from None
        if isinstance(data, dict) and isinstance(data.get("keys"), dict | list):
            data = data["keys"]
        pairs: list[tuple[object, object]]
        if isinstance(data, dict):
            pairs = list(data.items())
        elif isinstance(data, list) and all(isinstance(d, dict) for d in data):
            pairs = [(d.get("key"), d.get("tenant")) for d in data]
        else:
            raise ConfigError(
                f'The API key file {source!r} must map keys to tenants: {{"KEY": "TENANT"}} '
                'or [{"key": ..., "tenant": ...}].'
            )
        out: dict[str, str] = {}
        for i, (key, tenant) in enumerate(pairs):
            _check_pair(key, tenant, where=f" in {source} (entry {i + 1})")
            out[key] = tenant  # type: ignore[index]
        return out
    out = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) != 2:
            raise ConfigError(f"{source}, line {lineno}: expected 'KEY TENANT', got {line!r}.")
        _check_pair(parts[0], parts[1], where=f" at {source}, line {lineno}")
        if parts[0] in out and out[parts[0]] != parts[1]:
            raise ConfigError(f"{source}, line {lineno}: key given twice with different tenants.")
        out[parts[0]] = parts[1]
    return out


def bearer_token(headers: Mapping[str, str]) -> str | None:
    value = headers.get("authorization", "")
    scheme, _, token = value.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return headers.get("x-api-key") or None


def request_tenant(headers: Mapping[str, str], keys: ApiKeys | None, ctx: Context | None) -> str | None:
    """The tenant of one request (see the module docstring); 401 when keys are on and none match."""
    if keys is not None:
        token = bearer_token(headers)
        if token is None:
            raise RequestError(
                401,
                "Missing API key: send 'Authorization: Bearer KEY'.",
                code="missing_api_key",
            )
        tenant = keys.tenant_for(token)
        if tenant is None:
            raise RequestError(401, "Incorrect API key provided.", code="invalid_api_key")
        return tenant
    tenant = headers.get(TENANT_HEADER) or None
    if tenant is None and ctx is not None:
        value = baggage.get_baggage(semconv.PTUNE_TENANT, ctx)
        tenant = str(value) if value else None
    if tenant is not None and not _TENANT_RE.match(tenant):
        raise RequestError(400, f"Bad tenant {tenant!r}: tenants match [A-Za-z0-9._-]+.", param="X-Tenant")
    return tenant


def name_owner(name: str) -> str | None:
    """The tenant prefix of a deployment or adapter name (``acme/support@prod`` → ``acme``)."""
    head, sep, _ = name.partition("/")
    return head if sep and head else None


def deployment_owner(deployment: str, record: Mapping[str, object] | None) -> str | None:
    recorded = record.get("tenant") if record else None
    if isinstance(recorded, str) and recorded:
        return recorded
    return name_owner(deployment)


def check_access(tenant: str | None, owner: str | None, what: str, enforce: bool) -> None:
    """403 unless ``tenant`` owns the thing (only when keys are on)."""
    if not enforce:
        return
    if owner is None or owner != tenant:
        whose = f"tenant {owner!r}" if owner else "no tenant"
        raise RequestError(
            403,
            f"Tenant {tenant!r} may not use {what}: it belongs to {whose}.",
            param="model",
            code="permission_denied",
        )
