"""Fixtures for the trainer tests: the tiny-random base (float32 and float64) and toy datasets."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

# Two cores shared by many processes: one thread is several times faster than two contending.
torch.set_num_threads(1)

GOOD = ("good", "great", "love")
BAD = ("bad", "hate", "not good")
FILLER = ("cat", "dog", "sun", "day", "red", "blue")


def toy_rows(n: int, start: int = 0, tenant: str | None = None) -> list[dict[str, Any]]:
    """A learnable sentiment task: the word decides the label."""
    rows = []
    for i in range(start, start + n):
        pos = i % 2 == 0
        word = (GOOD if pos else BAD)[i % 3]
        row: dict[str, Any] = {
            "id": f"r{i}",
            "input": f"the movie was {word} {FILLER[i % len(FILLER)]} {i}",
            "target": " positive" if pos else " negative",
        }
        if tenant is not None:
            row["tenant"] = tenant
        rows.append(row)
    return rows


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def tiny():
    from trace_ptune.models import load_model

    return load_model("tiny-random")


@pytest.fixture(scope="session")
def tiny64():
    from trace_ptune.models import load_model

    return load_model("tiny-random", dtype=torch.float64)


@pytest.fixture
def toy_data(tmp_path: Path) -> tuple[Path, Path]:
    train = write_jsonl(tmp_path / "train.jsonl", toy_rows(32))
    evals = write_jsonl(tmp_path / "eval.jsonl", toy_rows(8, start=100))
    return train, evals
