"""Fixtures for the foundation tests: the tiny-random base model and soft-prompt factories."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

from trace_ptune import semconv
from trace_ptune.adapters.artifact import SoftPrompt
from trace_ptune.models import BaseModel, load_model

_LOADED: dict[str, BaseModel] = {}


def _load(dtype: str) -> BaseModel:
    # Function-scoped fixtures run after the autouse tmp_home (which points the model cache at
    # the shared test cache); the loaded model itself is reused across tests.
    if dtype not in _LOADED:
        _LOADED[dtype] = load_model("tiny-random", dtype=dtype)
    return _LOADED[dtype]


@pytest.fixture
def tiny() -> BaseModel:
    """tiny-random in float32."""
    return _load("float32")


@pytest.fixture
def tiny64() -> BaseModel:
    """tiny-random in float64 (exact comparisons)."""
    return _load("float64")


@pytest.fixture
def make_sp() -> Callable[..., SoftPrompt]:
    """Build a soft prompt for the tiny model with seeded float32-representable values."""

    def make(
        method: str = semconv.METHOD_PROMPT_TUNING, *, n: int = 3, seed: int = 0, **kwargs: Any
    ) -> SoftPrompt:
        g = torch.Generator().manual_seed(seed)
        if method == semconv.METHOD_PREFIX_TUNING:
            kv = torch.randn(2, 2, 2, n, 16, generator=g)
            return SoftPrompt(method, n, 64, prefix_kv=kv, **kwargs)
        emb = torch.randn(n, 64, generator=g)
        return SoftPrompt(method, n, 64, embeddings=emb, **kwargs)

    return make
