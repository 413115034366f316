"""Per-example results files: what ``trace-ptune eval run --out`` writes and ``eval compare`` reads.

JSONL, one object per example, in dataset order::

    {"id": "q1", "scores": {"exact_match": 1.0, "f1": 1.0}, "labels": {"exact_match": "match"},
     "run_id": "...", "adapter_hash": "sha256:...", "dataset_hash": "sha256:...",
     "model": "tiny-random", "base_fingerprint": "sha256:...", "response_id": "...",
     "trace_id": "<32 hex>", "span_id": "<16 hex>"}

``explanations`` is present when a scorer explained itself, ``error`` when the generation failed
(every metric then scores 0.0 with label ``error``). ``input``, ``expected`` and ``output`` are
present only when content capture is on or ``--save-outputs`` was given. Rows only ever gain fields.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trace_ptune.errors import DataError


@dataclass
class ExampleResult:
    """The scores of one example in one eval run."""

    id: str
    scores: dict[str, float]
    labels: dict[str, str] = field(default_factory=dict)
    explanations: dict[str, str] = field(default_factory=dict)
    run_id: str | None = None
    adapter_hash: str | None = None
    dataset_hash: str | None = None
    model: str | None = None
    base_fingerprint: str | None = None
    response_id: str | None = None
    trace_id: str | None = None
    span_id: str | None = None
    error: str | None = None
    input: Any = None
    expected: Any = None
    output: str | None = None

    def to_row(self) -> dict[str, Any]:
        row: dict[str, Any] = {"id": self.id, "scores": dict(self.scores)}
        for key in ("labels", "explanations"):
            if getattr(self, key):
                row[key] = dict(getattr(self, key))
        for key in (
            "run_id", "adapter_hash", "dataset_hash", "model", "base_fingerprint",
            "response_id", "trace_id", "span_id", "error", "input", "expected", "output",
        ):  # fmt: skip
            value = getattr(self, key)
            if value is not None:
                row[key] = value
        return row

    @classmethod
    def from_row(cls, row: Mapping[str, Any], where: str) -> ExampleResult:
        if not isinstance(row, Mapping) or "id" not in row:
            raise DataError(f"{where}: a results row needs an 'id'; is this a file from `eval run --out`?")
        scores = row.get("scores")
        if not isinstance(scores, Mapping):
            raise DataError(
                f"{where}: a results row needs a 'scores' object; is this a file from `eval run --out`?"
            )
        clean: dict[str, float] = {}
        for metric, value in scores.items():
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise DataError(f"{where}: score {metric!r} is {value!r}; scores must be finite numbers.")
            clean[str(metric)] = float(value)
        known = {k: row.get(k) for k in cls.__dataclass_fields__ if k not in ("id", "scores")}
        known["labels"] = dict(known.get("labels") or {})
        known["explanations"] = dict(known.get("explanations") or {})
        return cls(id=str(row["id"]), scores=clean, **known)


def write_results(path: str | Path, results: Iterable[ExampleResult]) -> Path:
    """Write a results file (atomically: a crash leaves the old file, not half a new one)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        for r in results:
            fh.write(json.dumps(r.to_row(), ensure_ascii=False) + "\n")
    tmp.replace(path)
    return path


def read_results(path: str | Path) -> list[ExampleResult]:
    """Read a results file; a bad line is a ``DataError`` naming the file and line number."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise DataError(
            f"results file {str(path)!r} does not exist; write one with `eval run --out`."
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read results file {str(path)!r}: {exc}.") from None
    out: list[ExampleResult] = []
    seen: set[str] = set()
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{where}: invalid JSON ({exc.msg} at column {exc.colno}).") from None
        result = ExampleResult.from_row(row, where)
        if result.id in seen:
            raise DataError(f"{where}: example id {result.id!r} appears twice; ids must be unique.")
        seen.add(result.id)
        out.append(result)
    if not out:
        raise DataError(f"results file {str(path)!r} is empty; run `eval run --out` first.")
    return out
