"""Train/eval leakage check: the trainer's guard (``trace_ptune.tuning.data.find_overlap``) on files.

The training file is the trainer's JSONL (``input``, ``target``); the eval file may be a golden
dataset (``expected`` is read as the target when it is a string) or another training-format file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from trace_ptune.evals.datasets import load_golden


def golden_as_rows(path: str | Path) -> list[dict[str, Any]]:
    """A golden dataset as the trainer's rows: ``id``, ``input`` text and ``target`` when known."""
    rows: list[dict[str, Any]] = []
    for ex in load_golden(path):
        row: dict[str, Any] = {"id": ex.id, "input": ex.input_text}
        target = ex.expected if isinstance(ex.expected, str) else ex.extra.get("target")
        if isinstance(target, str):
            row["target"] = target
        rows.append(row)
    return rows


def check_leakage(train: str | Path, eval: str | Path, *, key: str = "input") -> Any:
    """The trainer's ``OverlapReport`` for two files (``key``: ``input`` or ``input_target``)."""
    from trace_ptune.tuning.data import find_overlap, load_jsonl

    train_rows = load_jsonl(train, require_target=key == "input_target")
    return find_overlap(train_rows, golden_as_rows(eval), key=key)
