"""Train the demo's adapters: v1 for every tenant in one multi-tenant job, then acme v2 on noisy labels.

Adapters land in the demo's own store as ``demo/<tenant>@<version>``. The v2 run continues from
v1 (its parent) on ``acme_train_noisy.jsonl``, whose labels are mostly wrong: a genuinely worse
adapter, not a faked score.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from trace_ptune.demo import datasets
from trace_ptune.demo.config import Profile

if TYPE_CHECKING:
    from trace_ptune.adapters.artifact import SoftPrompt
    from trace_ptune.models import BaseModel

ADAPTER_PREFIX = "demo"


def adapter_name(tenant: str) -> str:
    return f"{ADAPTER_PREFIX}/{tenant}"


def _config(profile: Profile, model: str, **kwargs: Any) -> Any:
    from trace_ptune.tuning import TrainConfig

    return TrainConfig(
        model=model,
        method=profile.method,
        virtual_tokens=profile.virtual_tokens,
        init=profile.init,
        lr=profile.lr,
        batch_size=profile.batch_size,
        schedule="constant",
        seed=profile.seed,
        eval_max_new_tokens=max(profile.max_new_tokens, 2),
        **kwargs,
    )


def train_v1(
    base: BaseModel, profile: Profile, tenants: list[str], workdir: Path, *, quiet: bool
) -> tuple[dict[str, SoftPrompt], dict[str, Any]]:
    """One multi-tenant job: a soft prompt per tenant over the shared frozen base."""
    from trace_ptune.tuning import train_multitenant

    train_file = datasets.write_multitenant_train(tenants, workdir)
    eval_file = datasets.write_multitenant_eval(tenants, workdir)
    config = _config(
        profile,
        base.name,
        data=str(train_file),
        eval=str(eval_file),
        eval_every=max(1, profile.steps // 2),
        name=ADAPTER_PREFIX,
        steps=profile.steps,
        output_dir=str(workdir / "runs" / "v1"),
        quiet=quiet,
    )
    result = train_multitenant(config, base)
    return dict(result.soft_prompts), result.metrics


def train_noisy_v2(
    base: BaseModel, profile: Profile, tenant: str, parent: SoftPrompt, workdir: Path, *, quiet: bool
) -> tuple[SoftPrompt, dict[str, Any]]:
    """Continue ``parent`` on the tenant's noisy-label split; saved as the next version."""
    from trace_ptune.tuning import train

    config = _config(
        profile,
        base.name,
        data=str(datasets.split_path(tenant, "train_noisy")),
        name=adapter_name(tenant),
        steps=profile.noisy_steps,
        parent=parent.hash,
        output_dir=str(workdir / "runs" / "v2"),
        quiet=quiet,
    )
    result = train(config, base)
    return result.soft_prompt, result.metrics
