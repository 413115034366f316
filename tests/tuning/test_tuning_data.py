"""Data loading, dataset hashes, the leakage guard and tokenisation edge cases."""

from __future__ import annotations

from pathlib import Path

import pytest

from trace_ptune.errors import DataError, LeakageError
from trace_ptune.tuning.data import (
    collate,
    dataset_hash,
    encode_rows,
    find_overlap,
    guard_leakage,
    load_jsonl,
)

from .conftest import toy_rows, write_jsonl


def test_malformed_jsonl_names_the_line(tmp_path: Path) -> None:
    p = tmp_path / "bad.jsonl"
    p.write_text('{"input": "a", "target": "b"}\n\n{"input": "c", "target": \n', encoding="utf-8")
    with pytest.raises(DataError, match="line 3"):
        load_jsonl(p)


def test_row_without_target_names_the_line(tmp_path: Path) -> None:
    p = tmp_path / "bad.jsonl"
    p.write_text('{"input": "a", "target": "b"}\n{"input": "c"}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"line 2: field `target`"):
        load_jsonl(p)


def test_empty_dataset_is_refused(tmp_path: Path) -> None:
    p = tmp_path / "empty.jsonl"
    p.write_text("\n  \n", encoding="utf-8")
    with pytest.raises(DataError, match="empty"):
        load_jsonl(p)


def test_missing_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        load_jsonl(tmp_path / "nope.jsonl")


def test_dataset_hash_ignores_ids_but_not_content() -> None:
    rows = toy_rows(4)
    renamed = [{**r, "id": "x" + r["id"]} for r in rows]
    assert dataset_hash(rows) == dataset_hash(renamed)
    changed = [*rows[:3], {**rows[3], "target": " other"}]
    assert dataset_hash(rows) != dataset_hash(changed)
    assert dataset_hash(rows).startswith("sha256:")


def test_overlap_normalises_case_and_whitespace() -> None:
    train = [{"input": "Hello   World", "target": "a"}, {"input": "other", "target": "b"}]
    evals = [{"id": "e1", "input": "hello world", "target": "z"}, {"id": "e2", "input": "new", "target": "c"}]
    report = find_overlap(train, evals)
    assert report.count == 1 and report.eval_ids == ["e1"] and report.train_indices == [0]
    assert report.exact_pairs == 0
    pairs = find_overlap(train, evals, key="input_target")
    assert pairs.count == 0


def test_leakage_guard_refuses_or_drops_from_training() -> None:
    train = toy_rows(6)
    evals = [train[1], *toy_rows(2, start=50)]
    with pytest.raises(LeakageError, match="1 of 3 eval examples"):
        guard_leakage(train, evals, policy="refuse")
    kept, report = guard_leakage(train, evals, policy="drop")
    assert report.count == 1 and len(kept) == 5 and train[1] not in kept


def test_long_examples_are_truncated_with_a_count_or_refused(tiny) -> None:
    rows = [{"input": "the " * 40, "target": " positive"}, {"input": "hello", "target": " no"}]
    examples, stats = encode_rows(rows, tiny.tokenizer, max_length=16)
    assert stats.truncated == 1
    assert len(examples[0].ids) == 16
    # The target (and its end-of-sequence token) survives; the input loses its start.
    target = tiny.tokenizer(" positive", add_special_tokens=False)["input_ids"]
    assert examples[0].ids[examples[0].target_start :] == [*target, tiny.tokenizer.eos_token_id]
    with pytest.raises(DataError, match="longer than max_length=16"):
        encode_rows(rows, tiny.tokenizer, max_length=16, long_examples="error")


def test_target_that_tokenizes_to_nothing_is_refused(tiny) -> None:
    rows = [{"input": "hello", "target": " ok"}, {"input": "hello", "target": "", "_line": 2, "id": "b"}]
    with pytest.raises(DataError, match=r"line 2 .*tokenizes to nothing"):
        encode_rows(rows, tiny.tokenizer, max_length=64)


def test_collate_right_pads_and_marks_targets() -> None:
    from trace_ptune.tuning.data import EncodedExample

    batch = collate([EncodedExample([5, 6, 7], 2, 0), EncodedExample([8, 9], 1, 1)], pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 9, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert batch["target_mask"].tolist() == [[False, False, True], [False, True, False]]


def test_chat_template_wraps_the_input(tiny) -> None:
    rows = [{"input": "hello", "target": " yes"}]
    plain, _ = encode_rows(rows, tiny.tokenizer, max_length=64)
    chat, _ = encode_rows(rows, tiny.tokenizer, max_length=64, chat_template=True)
    assert chat[0].target_start > plain[0].target_start
    text = tiny.tokenizer.decode(chat[0].ids[: chat[0].target_start])
    assert "<|im_start|>assistant" in text


def test_bad_rows_from_file_keep_line_numbers(tmp_path: Path, tiny) -> None:
    p = write_jsonl(tmp_path / "t.jsonl", [{"input": "a", "target": " b"}, {"input": "c", "target": ""}])
    with pytest.raises(DataError, match="line 2"):
        encode_rows(load_jsonl(p), tiny.tokenizer, max_length=32)
