"""Shared fixtures: an isolated TRACE_PTUNE_HOME and an in-memory span exporter.

Area-specific fixtures live in ``tests/<area>/conftest.py``.
"""

from __future__ import annotations

import os

# The suite runs on 2 cores beside collector subprocesses: one intra-op thread per process avoids
# OpenMP threads spinning against each other (a tiny-model step goes from ~30 ms to ~250 ms).
os.environ.setdefault("OMP_NUM_THREADS", "1")

from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

_EXPORTER = InMemorySpanExporter()
_PROVIDER = TracerProvider()
_PROVIDER.add_span_processor(SimpleSpanProcessor(_EXPORTER))
trace.set_tracer_provider(_PROVIDER)


@pytest.fixture(autouse=True)
def tmp_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own TRACE_PTUNE_HOME, so no test touches the user's store."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("TRACE_PTUNE_HOME", str(home))
    # Share converted preset models across tests: conversion is slow, and the cache is keyed
    # by content, so sharing cannot leak state between tests.
    monkeypatch.setenv("TRACE_PTUNE_MODEL_CACHE", str(_model_cache(tmp_path_factory)))
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
    monkeypatch.delenv("TRACE_PTUNE_COLLECTOR", raising=False)
    return home


_CACHE: list[Path] = []


def _model_cache(factory: pytest.TempPathFactory) -> Path:
    if not _CACHE:
        _CACHE.append(factory.mktemp("model-cache"))
    return _CACHE[0]


@pytest.fixture
def tracer_provider() -> TracerProvider:
    """The global SDK tracer provider the tests installed."""
    return _PROVIDER


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """Finished spans of this test only (the global provider exports here synchronously)."""
    _EXPORTER.clear()
    yield _EXPORTER
    _EXPORTER.clear()
