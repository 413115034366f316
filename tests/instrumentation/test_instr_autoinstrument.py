"""`opentelemetry-instrument python script.py` finds our instrumentors through their entry points."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = """
import torch
from peft import PromptTuningConfig, TaskType, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

torch.manual_seed(0)
config = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                     num_attention_heads=2, num_key_value_heads=1)
model = get_peft_model(LlamaForCausalLM(config),
                       PromptTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=3))
model.generate(input_ids=torch.tensor([[1, 2, 3]]), max_new_tokens=2, do_sample=False)
"""


def test_opentelemetry_instrument_picks_up_the_instrumentors(tmp_path: Path):
    from importlib.metadata import entry_points

    names = {ep.name for ep in entry_points(group="opentelemetry_instrumentor")}
    assert {"trace_ptune_transformers", "trace_ptune_peft", "trace_ptune_hf_trainer"} <= names

    launcher = shutil.which("opentelemetry-instrument", path=str(Path(sys.executable).parent))
    if launcher is None:
        pytest.fail("opentelemetry-instrument is not installed next to this Python")
    script = tmp_path / "script.py"
    script.write_text(SCRIPT)
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env.update(
        OTEL_TRACES_EXPORTER="console",
        OTEL_METRICS_EXPORTER="none",
        OTEL_LOGS_EXPORTER="none",
        OTEL_SERVICE_NAME="auto-test",
    )
    proc = subprocess.run(
        [launcher, sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert '"name": "text_completion llama"' in proc.stdout
    assert '"ptune.adapter.hash": "sha256:' in proc.stdout
    assert '"ptune.usage.virtual_tokens": 3' in proc.stdout
