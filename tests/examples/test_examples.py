"""Every script in ``examples/`` runs to completion on tiny-random, as a user would run it.

Each runs in its own process with a temporary TRACE_PTUNE_HOME, no OTLP endpoint (the scripts
must cope: ``upstream_collector.py`` stands in its own collector) and one torch thread.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.py"))
TIMEOUT_S = 300  # generous: the machine may be shared; each takes seconds to tens of seconds alone


def test_examples_are_found() -> None:
    names = {p.name for p in EXAMPLES}
    assert {"quickstart.py", "upstream_collector.py", "online_eval.py", "multi_tenant.py"} <= names


@pytest.mark.parametrize("script", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_runs(script: Path, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env.pop("TRACE_PTUNE_COLLECTOR", None)
    env.update(TRACE_PTUNE_HOME=str(tmp_path / "home"), OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=TIMEOUT_S,
    )
    assert proc.returncode == 0, f"{script.name} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    assert "Traceback" not in proc.stderr
