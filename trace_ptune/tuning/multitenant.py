"""Multi-tenant training: K soft prompts, one per tenant, over one frozen base in one job.

Every batch mixes rows of different tenants; each row gets its own tenant's prompt by a
per-row gather (``stacked_prompts[tenant_of_row]``), so one forward pass serves all tenants.
Tenants never couple:

- each tenant's loss is the mean over *its own* target tokens in the step (a tenant with one
  row in a batch of 32 is not drowned out, nor does it dilute the others);
- gradients are clipped per tenant, and every tenant has its own AdamW state and its own
  learning-rate schedule, which advances only on the steps the tenant takes part in;
- a tenant absent from a step does not move at all: no weight decay, no momentum step.

So a multi-tenant run equals K separate runs that see the same per-tenant batches
(:func:`tenant_plan` derives those batches; the tests check equality in float64).
Adapters are stored as ``NAME/TENANT``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from trace_ptune.tuning.config import TrainConfig
from trace_ptune.tuning.trainer import Plan, TrainResult, run_training

if TYPE_CHECKING:
    from opentelemetry.trace import TracerProvider

    from trace_ptune.models import BaseModel

__all__ = ["tenant_plan", "train_multitenant"]


def train_multitenant(
    config: TrainConfig,
    base: BaseModel | None = None,
    *,
    tenant_field: str = "tenant",
    batches: Plan | None = None,
    tracer_provider: TracerProvider | None = None,
) -> TrainResult:
    """Train one soft prompt per value of ``tenant_field`` in the training rows.

    ``result.soft_prompts`` maps tenant -> stored adapter (``NAME/TENANT@version``);
    ``result.soft_prompt`` is the first tenant's.
    """
    return run_training(
        config, base, tenant_field=tenant_field, batches=batches, tracer_provider=tracer_provider
    )


def tenant_plan(
    plan: Plan, rows: Sequence[dict[str, Any]], tenant: str, tenant_field: str = "tenant"
) -> Plan:
    """The steps one tenant sees in a mixed ``plan``, indexed into that tenant's own rows
    (in file order): what a separate run of that tenant must be given to match."""
    own = [i for i, r in enumerate(rows) if str(r.get(tenant_field)) == tenant]
    position = {i: j for j, i in enumerate(own)}
    out: Plan = []
    for step in plan:
        micro = [[position[i] for i in mb if i in position] for mb in step]
        micro = [mb for mb in micro if mb]
        if micro:
            out.append(micro)
    return out
