"""The end-to-end demo behind ``trace-ptune demo``: train, gate, serve, regress, attribute.

    from trace_ptune.demo import DemoConfig, run_demo

    result = run_demo(DemoConfig(model="tiny-random", keep=True))
    print(result.regressions[0]["after_hash"])

Modules: ``config`` (tenants and per-model profiles), ``datasets`` (the bundled splits),
``collector`` (the collector child process), ``training``, ``gate``, ``traffic``, ``story``
(the orchestration) and ``report`` (the final table and pointers).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from trace_ptune._lazy import lazy_exports

__all__ = ["DemoConfig", "DemoResult", "run_demo"]

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "DemoConfig": "trace_ptune.demo.config",
        "DemoResult": "trace_ptune.demo.story",
        "run_demo": "trace_ptune.demo.story",
    },
)


if TYPE_CHECKING:
    from trace_ptune.demo.config import DemoConfig
    from trace_ptune.demo.story import DemoResult, run_demo
