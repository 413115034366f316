"""Fixtures of the runtime tests: the tiny-random base in float64 / float32 and soft prompts."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from trace_ptune import semconv
from trace_ptune.adapters.artifact import SoftPrompt
from trace_ptune.models import BaseModel, load_model


@pytest.fixture(scope="session")
def _models(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, BaseModel]]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TRACE_PTUNE_MODEL_CACHE", str(tmp_path_factory.mktemp("runtime-models")))
        mp.setenv("TRACE_PTUNE_HOME", str(tmp_path_factory.mktemp("runtime-home")))
        yield {
            "float64": load_model("tiny-random", dtype=torch.float64),
            "float32": load_model("tiny-random", dtype=torch.float32),
        }


@pytest.fixture
def base64(_models: dict[str, BaseModel]) -> BaseModel:
    return _models["float64"]


@pytest.fixture
def base32(_models: dict[str, BaseModel]) -> BaseModel:
    return _models["float32"]


def make_adapter(
    base: BaseModel, method: str, n: int, *, seed: int, name: str | None = None, scale: float = 1.0
) -> SoftPrompt:
    """A soft prompt with random values of the size the base needs, tagged with its fingerprint."""
    g = torch.Generator().manual_seed(seed)
    if method == semconv.METHOD_PREFIX_TUNING:
        shape = (base.num_layers, 2, base.num_kv_heads, n, base.head_dim)
        tensor = torch.randn(shape, generator=g, dtype=torch.float64) * scale
        return SoftPrompt(
            method=method,
            num_virtual_tokens=n,
            token_dim=base.hidden_size,
            prefix_kv=tensor.to(base.dtype),
            name=name,
            base_model_name=base.name,
            base_fingerprint=base.fingerprint,
        )
    # embeddings on the scale of the token embeddings, so the soft prompt matters but stays sane
    std = float(base.model.get_input_embeddings().weight.std())
    tensor = torch.randn(n, base.hidden_size, generator=g, dtype=torch.float64) * std * 4 * scale
    return SoftPrompt(
        method=method,
        num_virtual_tokens=n,
        token_dim=base.hidden_size,
        embeddings=tensor.to(base.dtype),
        name=name,
        base_model_name=base.name,
        base_fingerprint=base.fingerprint,
    )
