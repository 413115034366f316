"""What the demo runs: the two tenants, and per-model training and traffic settings.

The settings are tuned per base model so that the story is genuine on each: the clean adapter
really learns its task, and the adapter trained on noisy labels really is worse. ``tiny-random``
is a random 2-layer model, so it gets prefix tuning (the most capacity per virtual token) and is
scored on its first generated token; ``smollm2-135m`` gets plain prompt tuning.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from trace_ptune import semconv
from trace_ptune.errors import ConfigError


@dataclass(frozen=True)
class Tenant:
    """One tenant of the demo: its bundled dataset prefix, deployment and task instruction."""

    name: str
    deployment: str
    instruction: str  # the hard-prompt baseline the gate compares the soft prompt against


TENANTS = (
    Tenant("acme", "acme/support@prod", "Classify the sentiment of the review as positive or negative.\n"),
    Tenant(
        "globex",
        "globex/routing@prod",
        "Route the support ticket to the billing, shipping or technical team.\n",
    ),
)
REGRESSED = "acme"  # the tenant whose second version is trained on noisy labels


@dataclass(frozen=True)
class Profile:
    """Training and serving knobs for one base model."""

    method: str
    virtual_tokens: int
    init: str
    lr: float
    steps: int  # optimizer steps of the multi-tenant v1 job
    noisy_steps: int  # steps of the acme v2 run, continued from v1 on noisy labels
    batch_size: int
    max_new_tokens: int  # enough for the answer's label; scoring reads the label off the output
    requests_per_phase: int  # production requests per tenant in each of the three phases
    canary_percent: float
    serve_batch: int
    seed: int = 0
    threads: int | None = None  # torch threads (None: torch's default)


def _threads() -> int | None:
    """Torch threads for the real model: all cores but on a 2-core machine, where a second
    thread contending with the collector and the OS costs more than it brings."""
    cores = os.cpu_count() or 1
    return 1 if cores <= 2 else None


PROFILES = {
    "tiny-random": Profile(
        method=semconv.METHOD_PREFIX_TUNING,
        virtual_tokens=2,
        init="vocab",
        lr=0.03,
        steps=200,
        noisy_steps=120,
        batch_size=16,
        max_new_tokens=1,
        requests_per_phase=240,
        canary_percent=30.0,
        serve_batch=64,
        threads=1,  # a model this small only loses time to thread hand-offs
    ),
    "default": Profile(
        method=semconv.METHOD_PROMPT_TUNING,
        virtual_tokens=8,
        init="labels",
        lr=0.05,
        steps=24,
        noisy_steps=16,
        batch_size=8,
        max_new_tokens=2,
        requests_per_phase=100,
        canary_percent=30.0,
        serve_batch=32,
        threads=_threads(),
    ),
}


@dataclass
class DemoConfig:
    """One demo run. ``workdir`` defaults to a new temporary directory; ``keep`` keeps it."""

    model: str = "smollm2-135m"
    workdir: str | None = None
    keep: bool = False
    quiet: bool = False
    profile: Profile | None = None
    min_n: int = 30
    alpha: float = 0.01
    tenants: tuple[Tenant, ...] = field(default=TENANTS)

    def __post_init__(self) -> None:
        if not self.model:
            raise ConfigError("the demo needs a base model; pass --model smollm2-135m or tiny-random.")
        if self.workdir is not None:
            path = Path(self.workdir).expanduser()
            if path.exists() and any(path.iterdir()):
                raise ConfigError(
                    f"workdir {str(path)!r} is not empty; give a new or empty directory so the demo "
                    "never mixes its store and traces with other data."
                )
        if self.profile is None:
            self.profile = PROFILES.get(self.model, PROFILES["default"])
