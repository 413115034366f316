"""One tiny-random demo run per test session, shared by the demo and dashboard tests.

The demo runs as its own process (``python -m trace_ptune.cli.main demo``), as users run it: it
installs global OpenTelemetry providers and its own TRACE_PTUNE_HOME, which must not leak into
the test process. ``--keep --json`` leaves the DuckDB file and the adapter store for the checks.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

DEMO_TIMEOUT_S = 600  # a ceiling for a badly overloaded machine; the run itself takes well under a minute


@dataclass
class DemoRun:
    workdir: Path
    db: Path
    home: Path  # the demo's own TRACE_PTUNE_HOME (adapter store)
    output: dict[str, Any]
    stderr: str


def run_demo_process(workdir: Path, model_cache: str) -> DemoRun:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env.pop("TRACE_PTUNE_COLLECTOR", None)
    env["TRACE_PTUNE_MODEL_CACHE"] = model_cache  # the tiny preset builds in a second
    cmd = [sys.executable, "-m", "trace_ptune.cli.main", "demo", "--model", "tiny-random"]
    cmd += ["--keep", "--json", "--workdir", str(workdir)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=DEMO_TIMEOUT_S)
    assert proc.returncode == 0, f"demo failed ({proc.returncode}): {proc.stderr[-3000:]}"
    output = json.loads(proc.stdout)
    return DemoRun(workdir, Path(output["db"]), workdir / "home", output, proc.stderr)


_RUNS: list[DemoRun] = []


def shared_demo_run(factory: pytest.TempPathFactory) -> DemoRun:
    """The session's one demo run (started on first use, whichever test module asks first)."""
    if not _RUNS:
        base = factory.mktemp("demo")
        _RUNS.append(run_demo_process(base / "work", str(base / "model-cache")))
    return _RUNS[0]


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> DemoRun:
    """The kept result of one ``trace-ptune demo --model tiny-random --keep --json``."""
    return shared_demo_run(tmp_path_factory)
