"""Golden datasets: JSONL files of examples a model is measured on, with a stable content hash.

One JSON object per line::

    {"id": "q1", "input": "2+2=", "expected": "4", "tags": ["math"], "rubric": "digits only"}

- ``input`` (required): a string, or a list of chat messages (``{"role", "content"}`` dicts).
- ``id`` (optional): a string or integer, unique in the file; defaults to the example's 1-based
  position (blank and comment lines not counted).
- ``expected`` (optional): the reference: a string, a list of acceptable strings, or any JSON
  value for the JSON scorers. Reference-free scorers do not need it.
- ``rubric`` (optional string) and ``tags`` (optional list of strings) are passed to scorers.
  Any other field is kept in ``Example.extra``.

Blank lines and lines starting with ``//`` are skipped. The dataset hash
(``ptune.eval.dataset.hash``) is ``sha256:<hex>`` over the canonical JSON (sorted keys, no
whitespace, UTF-8) of every example (``Example.to_row()``) in file order, one per line: it does not
change with formatting, blank lines or key order, and changes with any value, the row order, or
an added or removed row.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trace_ptune.errors import DataError

_KNOWN = ("id", "input", "expected", "rubric", "tags")


@dataclass(frozen=True)
class Example:
    """One golden example."""

    id: str
    input: str | list[dict[str, Any]]
    expected: Any = None
    rubric: str | None = None
    tags: tuple[str, ...] = ()
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def input_text(self) -> str:
        """The input as plain text (chat messages joined as ``role: content`` lines)."""
        if isinstance(self.input, str):
            return self.input
        return "\n".join(f"{m.get('role', 'user')}: {m.get('content', '')}" for m in self.input)

    def to_row(self) -> dict[str, Any]:
        """The JSON object this example was read from (canonical field set)."""
        row: dict[str, Any] = {"id": self.id, "input": self.input}
        if self.expected is not None:
            row["expected"] = self.expected
        if self.rubric is not None:
            row["rubric"] = self.rubric
        if self.tags:
            row["tags"] = list(self.tags)
        row.update(self.extra)
        return row


@dataclass(frozen=True)
class GoldenDataset:
    """A loaded golden dataset: its examples, content hash and origin."""

    examples: tuple[Example, ...]
    hash: str
    path: Path | None = None

    def __len__(self) -> int:
        return len(self.examples)

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self.examples)

    def head(self, limit: int | None) -> GoldenDataset:
        """The first ``limit`` examples, re-hashed (a subset is a different dataset)."""
        if limit is None or limit >= len(self.examples):
            return self
        if limit < 1:
            raise DataError(f"limit must be at least 1, got {limit}; pass a positive number.")
        subset = self.examples[:limit]
        return GoldenDataset(subset, dataset_hash(e.to_row() for e in subset), self.path)


def canonical_json(value: Any) -> str:
    """Sorted keys, no whitespace, UTF-8 kept: the form every hash in this module is taken over."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def dataset_hash(rows: Iterable[Mapping[str, Any]]) -> str:
    """``sha256:<hex>`` over the canonical JSON of each row, one row per line, in order."""
    digest = hashlib.sha256()
    for row in rows:
        digest.update(canonical_json(dict(row)).encode("utf-8"))
        digest.update(b"\n")
    return "sha256:" + digest.hexdigest()


def example_from_row(row: Mapping[str, Any], *, default_id: str, where: str) -> Example:
    """Validate one parsed row; ``where`` names it in errors (``file.jsonl:12``)."""
    if not isinstance(row, Mapping):
        raise DataError(
            f"{where}: expected a JSON object, got {type(row).__name__}; write one object per line."
        )
    if "input" not in row:
        raise DataError(f"{where}: the row has no 'input' field; every example needs one.")
    inp = row["input"]
    if isinstance(inp, list):
        if not all(isinstance(m, Mapping) and "content" in m for m in inp):
            raise DataError(
                f"{where}: 'input' is a list but not of chat messages; use a string or "
                '[{"role": ..., "content": ...}] messages.'
            )
        inp = [dict(m) for m in inp]
    elif not isinstance(inp, str):
        raise DataError(f"{where}: 'input' must be a string or chat messages, got {type(inp).__name__}.")
    raw_id = row.get("id", default_id)
    if isinstance(raw_id, bool) or not isinstance(raw_id, str | int):
        raise DataError(f"{where}: 'id' must be a string or an integer, got {raw_id!r}.")
    rubric = row.get("rubric")
    if rubric is not None and not isinstance(rubric, str):
        raise DataError(f"{where}: 'rubric' must be a string, got {type(rubric).__name__}.")
    tags = row.get("tags") or ()
    if isinstance(tags, str):
        tags = (tags,)
    if not isinstance(tags, list | tuple) or not all(isinstance(t, str) for t in tags):
        raise DataError(f"{where}: 'tags' must be a list of strings, got {tags!r}.")
    extra = {k: v for k, v in row.items() if k not in _KNOWN}
    return Example(
        id=str(raw_id),
        input=inp,
        expected=row.get("expected"),
        rubric=rubric,
        tags=tuple(tags),
        extra=extra,
    )


def examples_from_rows(rows: Sequence[Mapping[str, Any]], *, source: str = "rows") -> GoldenDataset:
    """Build a dataset from rows already in memory (ids default to the 1-based position)."""
    examples = [
        example_from_row(row, default_id=str(i), where=f"{source}[{i}]") for i, row in enumerate(rows, 1)
    ]
    return _finish(examples, None, source)


def load_golden(path: str | Path) -> GoldenDataset:
    """Read a golden JSONL file; a bad line is a ``DataError`` naming the file and line number."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"golden dataset {str(path)!r} does not exist; check the path.") from None
    except UnicodeDecodeError as exc:
        raise DataError(f"golden dataset {str(path)!r} is not UTF-8 ({exc.reason}); re-encode it.") from None
    except OSError as exc:
        raise DataError(f"cannot read golden dataset {str(path)!r}: {exc.strerror}.") from None
    examples: list[Example] = []
    for lineno, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("//"):
            continue
        where = f"{path}:{lineno}"
        try:
            row = json.loads(stripped)
        except json.JSONDecodeError as exc:
            raise DataError(
                f"{where}: invalid JSON ({exc.msg} at column {exc.colno}); fix that line."
            ) from None
        examples.append(example_from_row(row, default_id=str(len(examples) + 1), where=where))
    return _finish(examples, path, str(path))


def _finish(examples: list[Example], path: Path | None, source: str) -> GoldenDataset:
    if not examples:
        raise DataError(f"golden dataset {source!r} has no examples; add JSONL rows with an 'input'.")
    seen: dict[str, int] = {}
    for i, ex in enumerate(examples):
        if ex.id in seen:
            raise DataError(
                f"{source}: example id {ex.id!r} appears twice (rows {seen[ex.id] + 1} and {i + 1}); ids must be unique."
            )
        seen[ex.id] = i
    return GoldenDataset(tuple(examples), dataset_hash(e.to_row() for e in examples), path)
