"""Training data: JSONL loading, dataset hashes, the train/eval leakage guard and tokenisation.

A dataset is JSON Lines, one object per line with string fields ``input`` and ``target`` and
an optional ``id`` (multi-tenant runs also read ``tenant``)::

    {"id": "r1", "input": "Review: loved it. Sentiment:", "target": " positive"}

:func:`find_overlap` is the one leakage check of the project: the trainer calls it before
training and ``trace-ptune eval leakage`` reports it.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trace_ptune.errors import DataError, LeakageError

__all__ = [
    "EncodedExample",
    "EncodingStats",
    "OverlapReport",
    "dataset_hash",
    "encode_rows",
    "find_overlap",
    "guard_leakage",
    "load_jsonl",
    "normalize_text",
]

_SPACE = re.compile(r"\s+")


def load_jsonl(path: str | Path, *, require_target: bool = True) -> list[dict[str, Any]]:
    """Read a JSONL dataset; every error names the file and line number.

    Blank lines are skipped. Each row keeps its fields and gets ``id`` (the line number when
    absent) so reports can point back at it.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise DataError(f"Dataset {str(p)!r} does not exist; pass a JSONL file with `input` and `target`.")
    rows: list[dict[str, Any]] = []
    with p.open("r", encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(
                    f"{p.name} line {lineno}: not valid JSON ({exc.msg}); fix or remove that line."
                ) from None
            if not isinstance(row, dict):
                raise DataError(f"{p.name} line {lineno}: expected a JSON object with `input` and `target`.")
            keys = ("input", "target") if require_target else ("input",)
            for key in keys:
                if not isinstance(row.get(key), str):
                    raise DataError(
                        f"{p.name} line {lineno}: field `{key}` must be a string "
                        f"(got {type(row.get(key)).__name__}); every row needs `input` and `target`."
                    )
            row.setdefault("id", str(lineno))
            row["_line"] = lineno
            rows.append(row)
    if not rows:
        raise DataError(f"Dataset {str(p)!r} is empty; it needs at least one row with `input` and `target`.")
    return rows


def normalize_text(text: str) -> str:
    """Unicode NFKC, case-folded, whitespace collapsed: what counts as "the same" text."""
    return _SPACE.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _key(row: dict[str, Any], key: str) -> str:
    if key == "input":
        return _digest(normalize_text(row["input"]))
    if key == "input_target":
        return _digest(normalize_text(row["input"]) + "\x1f" + normalize_text(row.get("target", "")))
    raise DataError(f"Overlap key {key!r} is unknown; use 'input' or 'input_target'.")


def dataset_hash(rows: Iterable[dict[str, Any]]) -> str:
    """``sha256:<hex>`` over the rows' ``input``/``target`` in order (ids and extra fields excluded)."""
    h = hashlib.sha256(b"trace-ptune/dataset/v1")
    for row in rows:
        piece = json.dumps([row["input"], row.get("target", "")], ensure_ascii=False, separators=(",", ":"))
        data = piece.encode("utf-8")
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return "sha256:" + h.hexdigest()


@dataclass
class OverlapReport:
    """Train/eval examples that are the same after normalisation."""

    key: str
    n_train: int
    n_eval: int
    train_indices: list[int] = field(default_factory=list)  # train rows that also occur in eval
    eval_indices: list[int] = field(default_factory=list)  # eval rows that also occur in train
    eval_ids: list[str] = field(default_factory=list)
    exact_pairs: int = 0  # eval rows whose input AND target occur in train

    @property
    def count(self) -> int:
        """Number of eval rows that leak from the training set."""
        return len(self.eval_indices)

    @property
    def fraction(self) -> float:
        return self.count / self.n_eval if self.n_eval else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "n_train": self.n_train,
            "n_eval": self.n_eval,
            "overlapping_eval": self.count,
            "overlapping_train": len(self.train_indices),
            "exact_pairs": self.exact_pairs,
            "fraction": self.fraction,
            "eval_ids": list(self.eval_ids),
        }


def find_overlap(
    train_rows: Sequence[dict[str, Any]],
    eval_rows: Sequence[dict[str, Any]],
    key: str = "input",
) -> OverlapReport:
    """Hash normalised ``input`` (``key="input"``) or ``input``+``target`` (``"input_target"``)
    of both sets and report which rows occur in both."""
    train_keys: dict[str, list[int]] = {}
    for i, row in enumerate(train_rows):
        train_keys.setdefault(_key(row, key), []).append(i)
    pair_keys = {_key(row, "input_target") for row in train_rows if "target" in row}
    report = OverlapReport(key=key, n_train=len(train_rows), n_eval=len(eval_rows))
    hit_train: set[int] = set()
    for j, row in enumerate(eval_rows):
        k = _key(row, key)
        if k in train_keys:
            report.eval_indices.append(j)
            report.eval_ids.append(str(row.get("id", j)))
            hit_train.update(train_keys[k])
            if "target" in row and _key(row, "input_target") in pair_keys:
                report.exact_pairs += 1
    report.train_indices = sorted(hit_train)
    return report


def guard_leakage(
    train_rows: list[dict[str, Any]],
    eval_rows: list[dict[str, Any]],
    policy: str = "refuse",
    key: str = "input",
) -> tuple[list[dict[str, Any]], OverlapReport]:
    """Apply the leakage policy: ``refuse`` raises, ``drop`` removes the overlapping *training*
    rows (the eval set stays fixed), ``ignore`` only reports. Returns (train rows, report)."""
    report = find_overlap(train_rows, eval_rows, key=key)
    if report.count == 0 or policy == "ignore":
        return train_rows, report
    if policy == "refuse":
        sample = ", ".join(report.eval_ids[:5])
        raise LeakageError(
            f"{report.count} of {report.n_eval} eval examples also occur in the training data "
            f"(eval ids: {sample}); remove them, or pass --leakage drop to drop them from training."
        )
    drop = set(report.train_indices)
    kept = [row for i, row in enumerate(train_rows) if i not in drop]
    if not kept:
        raise DataError("Every training example also occurs in the eval set; nothing is left to train on.")
    return kept, report


# ---------------------------------------------------------------- tokenisation


@dataclass
class EncodedExample:
    """Token ids of ``input`` followed by ``target``; loss is on ``ids[target_start:]``."""

    ids: list[int]
    target_start: int
    index: int  # row index in the dataset
    tenant: int = 0


@dataclass
class EncodingStats:
    examples: int = 0
    truncated: int = 0
    tokens: int = 0
    target_tokens: int = 0


def _prompt_ids(tokenizer: Any, text: str, chat_template: bool) -> list[int]:
    if chat_template:
        if not getattr(tokenizer, "chat_template", None):
            raise DataError(
                "--chat-template was given but this model's tokenizer has no chat template; drop the flag."
            )
        out = tokenizer.apply_chat_template(
            [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=True
        )
        if isinstance(out, dict) or hasattr(out, "input_ids"):
            out = out["input_ids"]
        return [int(t) for t in out]
    return [int(t) for t in tokenizer(text, add_special_tokens=True)["input_ids"]]


def prompt_ids(tokenizer: Any, text: str, chat_template: bool = False) -> list[int]:
    """Token ids of an ``input`` the way training sees it (used for greedy evaluation too)."""
    return _prompt_ids(tokenizer, text, chat_template)


def target_ids(tokenizer: Any, text: str) -> list[int]:
    """Token ids of a ``target``, without the end-of-sequence token."""
    return [int(t) for t in tokenizer(text, add_special_tokens=False)["input_ids"]]


def encode_rows(
    rows: Sequence[dict[str, Any]],
    tokenizer: Any,
    *,
    max_length: int,
    long_examples: str = "truncate",
    chat_template: bool = False,
    add_eos: bool = True,
    min_prompt_tokens: int = 0,
    tenant_of: dict[str, int] | None = None,
) -> tuple[list[EncodedExample], EncodingStats]:
    """Tokenise rows as ``prompt ids + target ids (+ eos)``.

    Examples longer than ``max_length`` lose the start of their input (the target is kept; a
    target alone longer than the limit loses its end), counted in ``stats.truncated``; with
    ``long_examples="error"`` they are refused instead. A target that tokenizes to nothing is
    an error naming the row.
    """
    eos = getattr(tokenizer, "eos_token_id", None)
    out: list[EncodedExample] = []
    stats = EncodingStats()
    for i, row in enumerate(rows):
        where = _where(row, i)
        p = _prompt_ids(tokenizer, row["input"], chat_template)
        t = target_ids(tokenizer, row["target"])
        if not t:
            raise DataError(
                f"{where}: target {row['target']!r} tokenizes to nothing; give it a non-empty target."
            )
        if add_eos and eos is not None:
            t = [*t, int(eos)]
        if len(p) + len(t) > max_length:
            if long_examples == "error":
                raise DataError(
                    f"{where}: {len(p) + len(t)} tokens is longer than max_length={max_length}; "
                    "raise --max-length or use --long-examples truncate."
                )
            stats.truncated += 1
            keep_prompt = max(min_prompt_tokens, max_length - len(t))
            p = p[len(p) - keep_prompt :] if keep_prompt > 0 else []
            t = t[: max_length - len(p)]
        if len(p) < min_prompt_tokens:
            raise DataError(
                f"{where}: input tokenizes to nothing; prefix tuning needs at least one input token."
            )
        tenant = 0
        if tenant_of is not None:
            tenant = tenant_of[str(row.get("tenant"))]
        out.append(EncodedExample(ids=p + t, target_start=len(p), index=i, tenant=tenant))
        stats.examples += 1
        stats.tokens += len(p) + len(t)
        stats.target_tokens += len(t)
    if not out:
        raise DataError("The dataset has no examples; it needs at least one row with `input` and `target`.")
    return out, stats


def _where(row: dict[str, Any], index: int) -> str:
    if "_line" in row:
        return f"line {row['_line']} (id {row.get('id')})"
    return f"row {index} (id {row.get('id', index)})"


def collate(examples: Sequence[EncodedExample], pad_id: int) -> dict[str, Any]:
    """Right-pad a batch: ``input_ids``/``attention_mask``/``target_mask`` are ``(B, T)``.

    Padding on the right keeps the soft prompt and the text adjacent, so position ids are plain
    ``0..T-1`` and no pad token ever sits between them.
    """
    import torch

    width = max(len(e.ids) for e in examples)
    B = len(examples)
    input_ids = torch.full((B, width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((B, width), dtype=torch.long)
    target_mask = torch.zeros((B, width), dtype=torch.bool)
    for b, e in enumerate(examples):
        n = len(e.ids)
        input_ids[b, :n] = torch.tensor(e.ids, dtype=torch.long)
        attention_mask[b, :n] = 1
        target_mask[b, e.target_start : n] = True
    tenants = torch.tensor([e.tenant for e in examples], dtype=torch.long)
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "target_mask": target_mask,
        "tenants": tenants,
    }
