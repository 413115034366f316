"""`opentelemetry-instrument python script.py` finds our instrumentors through their entry points.

The subprocess is started at collection time (see ``conftest.pytest_collection_modifyitems``) so
its imports overlap with the other tests; this test collects its output.
"""

from __future__ import annotations

from importlib.metadata import entry_points

import pytest

from .conftest import AUTO_RUN


def test_opentelemetry_instrument_picks_up_the_instrumentors(request: pytest.FixtureRequest):
    names = {ep.name for ep in entry_points(group="opentelemetry_instrumentor")}
    assert {"trace_ptune_transformers", "trace_ptune_peft", "trace_ptune_hf_trainer"} <= names

    proc = request.config.stash.get(AUTO_RUN, None)
    assert proc is not None, "opentelemetry-instrument is not installed next to this Python"
    stdout, stderr = proc.communicate(timeout=180)
    assert proc.returncode == 0, stderr[-2000:]
    assert '"name": "text_completion llama"' in stdout
    assert '"ptune.adapter.hash": "sha256:' in stdout
    assert '"ptune.usage.virtual_tokens": 3' in stdout
