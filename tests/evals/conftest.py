"""Fixtures for the evals tests: golden datasets and results files on disk."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest


def write_jsonl(path: Path, rows: Iterable[Any]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def jsonl(tmp_path: Path) -> Callable[[str, Iterable[Any]], Path]:
    """``jsonl("name.jsonl", rows)`` writes rows to a temporary file and returns its path."""

    def make(name: str, rows: Iterable[Any]) -> Path:
        return write_jsonl(tmp_path / name, rows)

    return make


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One converted tiny-random for every evals test (the autouse home fixture is per test)."""
    return tmp_path_factory.mktemp("evals-models")


@pytest.fixture(scope="session")
def base(model_cache: Path) -> Any:
    """The tiny-random base model in float32."""
    import torch

    from trace_ptune.models import load_model

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TRACE_PTUNE_MODEL_CACHE", str(model_cache))
        yield load_model("tiny-random", dtype=torch.float32)
