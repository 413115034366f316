"""The end-to-end demo behind ``trace-ptune demo``: train, gate, serve, regress, attribute.

    from trace_ptune.demo import DemoConfig, run_demo

    result = run_demo(DemoConfig(model="tiny-random", keep=True))
    print(result.regressions[0]["after_hash"])

Modules: ``config`` (tenants and per-model profiles), ``datasets`` (the bundled splits),
``collector`` (the collector child process), ``training``, ``gate``, ``traffic``, ``story``
(the orchestration) and ``report`` (the final table and pointers).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["DemoConfig", "DemoResult", "run_demo"]


def __getattr__(name: str) -> Any:
    if name == "DemoConfig":
        from trace_ptune.demo.config import DemoConfig

        return DemoConfig
    if name in ("DemoResult", "run_demo"):
        from trace_ptune.demo import story

        return getattr(story, name)
    raise AttributeError(f"module 'trace_ptune.demo' has no attribute {name!r}")


if TYPE_CHECKING:
    from trace_ptune.demo.config import DemoConfig
    from trace_ptune.demo.story import DemoResult, run_demo
