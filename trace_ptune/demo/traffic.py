"""Production traffic for the demo: both tenants mixed in every batch, scored by late labels.

Requests name only their tenant and deployment; the engine routes each one through the adapter
store's deployment (canary split by request id), so a promotion changes what serves the next
batch. The production rows carry known labels: after each batch the labels "arrive" and a
``LabelJoiner`` per tenant scores the remembered generation, as a child span of it tagged with
the adapter hash that served it.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from trace_ptune import semconv
from trace_ptune.demo import datasets
from trace_ptune.demo.config import Tenant
from trace_ptune.demo.scoring import LabelMatch


@dataclass
class PhaseStats:
    """Per (tenant, adapter hash): requests served and the mean label accuracy."""

    counts: dict[tuple[str, str], int] = field(default_factory=lambda: defaultdict(int))
    sums: dict[tuple[str, str], float] = field(default_factory=lambda: defaultdict(float))
    errors: int = 0

    def add(self, tenant: str, adapter_hash: str, score: float) -> None:
        self.counts[tenant, adapter_hash] += 1
        self.sums[tenant, adapter_hash] += score

    def rows(self) -> list[dict[str, Any]]:
        return [
            {"tenant": t, "adapter_hash": h, "requests": n, "accuracy": self.sums[t, h] / n}
            for (t, h), n in sorted(self.counts.items())
        ]


class ProductionTraffic:
    """Serves the bundled production splits through an engine, phase after phase."""

    def __init__(
        self, engine: Any, tenants: Sequence[Tenant], *, max_new_tokens: int, batch_size: int
    ) -> None:
        from trace_ptune.evals import LabelJoiner

        self.engine = engine
        self.tenants = list(tenants)
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        self.rows = {t.name: datasets.load_split(t.name, "production") for t in self.tenants}
        self.joiners = {
            t.name: LabelJoiner([LabelMatch(datasets.labels(t.name))]).attach(engine) for t in self.tenants
        }
        self.served = 0

    def _requests(self, phase: str, per_tenant: int) -> list[tuple[Any, str, str]]:
        """(request, tenant, expected label), tenants interleaved so every batch mixes them."""
        from trace_ptune.runtime import GenerationRequest

        out = []
        for i in range(per_tenant):
            for tenant in self.tenants:
                rows = self.rows[tenant.name]
                row = rows[(self.served + i) % len(rows)]
                request = GenerationRequest(
                    row["input"],
                    tenant=tenant.name,
                    deployment=tenant.deployment,
                    traffic=semconv.TRAFFIC_PRODUCTION,
                    max_new_tokens=self.max_new_tokens,
                    stop=("\n",),
                    request_id=f"{tenant.name}-{phase}-{i:04d}",
                )
                out.append((request, tenant.name, row["target"].strip()))
        return out

    def serve(self, phase: str, per_tenant: int, progress: Any = None) -> PhaseStats:
        """Serve ``per_tenant`` requests for every tenant; label each as soon as its batch ends."""
        stats = PhaseStats()
        work = self._requests(phase, per_tenant)
        for start in range(0, len(work), self.batch_size):
            chunk = work[start : start + self.batch_size]
            results = self.engine.generate([request for request, _, _ in chunk])
            for (_, tenant, expected), result in zip(chunk, results, strict=True):
                if result.error is not None:
                    stats.errors += 1
                    continue
                # The label arrives later (a resolved ticket, a confirmed review): join it now.
                [(_, score)] = self.joiners[tenant].label(result.response_id, expected)
                stats.add(tenant, result.adapter_hash or "", score.value)
            if progress is not None:
                progress(min(start + self.batch_size, len(work)), len(work))
        self.served += per_tenant
        return stats
