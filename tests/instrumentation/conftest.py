"""Fixtures for the instrumentation tests: a tiny base model, PEFT models, and instrumentation
wired to the global in-memory span exporter (see tests/conftest.py) plus in-memory metrics."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def base() -> Any:
    """The ``tiny-random`` preset (a small grouped-query Llama with a fixed tokenizer)."""
    from trace_ptune.models import load_model

    return load_model("tiny-random")


@pytest.fixture
def metric_reader() -> Any:
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    return InMemoryMetricReader()


@pytest.fixture
def instrumented(base: Any, metric_reader: Any, spans: Any) -> Iterator[Any]:
    """Every instrumentor on (global tracer provider, a private in-memory meter provider)."""
    from opentelemetry.sdk.metrics import MeterProvider

    import trace_ptune
    from trace_ptune.instrumentation import context, scoring

    trace_ptune.uninstrument()
    trace_ptune.instrument(meter_provider=MeterProvider(metric_readers=[metric_reader]))
    context.register_base_model(base)
    yield spans
    trace_ptune.uninstrument()
    scoring._registry.clear()


def make_peft(base: Any, kind: str = "prompt", n: int = 4, seed: int = 0) -> Any:
    """A fresh PEFT prompt-learning model on a private copy of the tiny base model."""
    import copy

    from peft import PrefixTuningConfig, PromptEncoderConfig, PromptTuningConfig, TaskType, get_peft_model

    from trace_ptune.instrumentation import context

    torch.manual_seed(seed)
    model = copy.deepcopy(base.model)
    context.register_base_model(model, name=base.name, fingerprint=base.fingerprint, tokenizer=base.tokenizer)
    if kind == "prompt":
        config = PromptTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=n)
    elif kind == "prefix":
        config = PrefixTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=n)
    elif kind == "ptuning":
        config = PromptEncoderConfig(
            task_type=TaskType.CAUSAL_LM, num_virtual_tokens=n, encoder_hidden_size=32
        )
    else:
        raise ValueError(kind)
    return get_peft_model(model, config)


def by_name(exporter: Any, prefix: str) -> list[Any]:
    return [s for s in exporter.get_finished_spans() if s.name.startswith(prefix)]


# ---------------------------------------------------------------- opentelemetry-instrument run

AUTO_RUN = pytest.StashKey[Any]()
AUTO_DIR = pytest.StashKey[Any]()
AUTO_SCRIPT = """
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


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Start the `opentelemetry-instrument` subprocess early when its test is selected."""
    if not any("test_instr_via_opentelemetry_instrument" in item.nodeid for item in items):
        return
    import os
    import shutil
    import subprocess
    import sys
    import tempfile
    from pathlib import Path

    launcher = shutil.which("opentelemetry-instrument", path=str(Path(sys.executable).parent))
    if launcher is None:
        return
    script = Path(tempfile.mkdtemp(prefix="trace-ptune-auto-")) / "script.py"
    script.write_text(AUTO_SCRIPT)
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env.update(
        OTEL_TRACES_EXPORTER="console",
        OTEL_METRICS_EXPORTER="none",
        OTEL_LOGS_EXPORTER="none",
        OTEL_SERVICE_NAME="auto-test",
        TRACE_PTUNE_HOME=str(script.parent),
    )
    config.stash[AUTO_DIR] = script.parent
    config.stash[AUTO_RUN] = subprocess.Popen(
        [launcher, sys.executable, str(script)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def pytest_unconfigure(config: pytest.Config) -> None:
    proc = config.stash.get(AUTO_RUN, None)
    if proc is not None and proc.poll() is None:
        proc.kill()
        proc.wait()
    directory = config.stash.get(AUTO_DIR, None)
    if directory is not None:
        import shutil

        shutil.rmtree(directory, ignore_errors=True)
