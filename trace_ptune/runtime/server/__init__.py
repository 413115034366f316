"""An OpenAI-compatible HTTP server for many tenants' soft prompts (``trace-ptune serve``).

``create_app(engine, ...)`` builds the starlette app; ``serve(...)`` loads a model and runs it
under uvicorn. See ``docs/serving.md``.
"""

from __future__ import annotations

from trace_ptune.runtime.server.app import create_app
from trace_ptune.runtime.server.auth import ApiKeys
from trace_ptune.runtime.server.scheduler import SCHEDULING_MODES, Scheduler

__all__ = ["SCHEDULING_MODES", "ApiKeys", "Scheduler", "create_app"]
