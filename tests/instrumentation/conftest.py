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
