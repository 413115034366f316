"""The bundled demo datasets (``trace_ptune/data/demo``) and the files the demo derives from them.

Each tenant has ``train``, ``eval``, ``production`` and ``train_noisy`` splits with rows
``{"id", "input", "target"}`` (``scripts/make_demo_data.py`` writes them). The demo writes:

- ``train_multitenant.jsonl`` / ``eval_multitenant.jsonl``: both tenants' rows with a
  ``tenant`` field, for one multi-tenant training job;
- ``<tenant>_golden.jsonl``: the eval split as a golden dataset (``expected`` = the label).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from trace_ptune.errors import DataError

SPLITS = ("train", "eval", "production", "train_noisy")


def data_dir() -> Path:
    """Where the bundled demo datasets are installed."""
    return Path(str(resources.files("trace_ptune") / "data" / "demo"))


def split_path(tenant: str, split: str) -> Path:
    path = data_dir() / f"{tenant}_{split}.jsonl"
    if not path.is_file():
        raise DataError(
            f"the bundled demo dataset {path.name} is missing from {path.parent}; reinstall trace-ptune "
            "or regenerate it with `python scripts/make_demo_data.py`."
        )
    return path


def load_split(tenant: str, split: str) -> list[dict[str, Any]]:
    """Rows of one bundled split."""
    path = split_path(tenant, split)
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def labels(tenant: str) -> list[str]:
    """The tenant's class labels (targets without their leading space), sorted."""
    return sorted({row["target"].strip() for row in load_split(tenant, "train")})


def write_jsonl(path: Path, rows: Sequence[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def write_multitenant_train(tenants: Sequence[str], directory: Path) -> Path:
    """One training file with every tenant's clean rows, tagged with ``tenant``."""
    rows = [{**row, "tenant": t} for t in tenants for row in load_split(t, "train")]
    return write_jsonl(directory / "train_multitenant.jsonl", rows)


def write_multitenant_eval(tenants: Sequence[str], directory: Path) -> Path:
    """Every tenant's eval rows, tagged with ``tenant``: the training job's held-out set."""
    rows = [{**row, "tenant": t} for t in tenants for row in load_split(t, "eval")]
    return write_jsonl(directory / "eval_multitenant.jsonl", rows)


def write_golden(tenant: str, directory: Path) -> Path:
    """The tenant's eval split as a golden dataset for ``trace_ptune.evals.run_eval``."""
    rows = [
        {"id": row["id"], "input": row["input"], "expected": row["target"].strip()}
        for row in load_split(tenant, "eval")
    ]
    return write_jsonl(directory / f"{tenant}_golden.jsonl", rows)
