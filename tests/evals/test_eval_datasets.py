"""Golden JSONL loading: validation with line numbers, stable hashing, results files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from trace_ptune.errors import DataError
from trace_ptune.evals.datasets import examples_from_rows, load_golden
from trace_ptune.evals.results import ExampleResult, read_results, write_results

ROWS = [
    {"id": "a", "input": "2+2=", "expected": "4", "tags": ["math"]},
    {"id": 7, "input": [{"role": "user", "content": "hi"}], "expected": ["hello", "hey"], "rubric": "greet"},
    {"input": "no id", "expected": {"k": 1}, "source": "web"},
]


def test_load_golden_reads_fields_and_defaults(jsonl):
    ds = load_golden(jsonl("g.jsonl", ROWS))
    assert [e.id for e in ds] == ["a", "7", "3"]
    assert ds.examples[0].tags == ("math",)
    assert ds.examples[1].input_text == "user: hi"
    assert ds.examples[1].rubric == "greet"
    assert ds.examples[2].extra == {"source": "web"}
    assert ds.hash.startswith("sha256:") and len(ds.hash) == 7 + 64


def test_hash_ignores_formatting_and_key_order_but_not_values(tmp_path: Path, jsonl):
    base = load_golden(jsonl("a.jsonl", ROWS)).hash
    pretty = tmp_path / "b.jsonl"
    pretty.write_text(
        "\n// a comment\n"
        + "\n\n".join(
            json.dumps(dict(reversed(list(r.items()))), indent=None, separators=(" ,", " : ")) for r in ROWS
        )
        + "\n",
        encoding="utf-8",
    )
    assert load_golden(pretty).hash == base
    assert examples_from_rows(ROWS).hash == base
    changed = [dict(ROWS[0], expected="5"), *ROWS[1:]]
    assert load_golden(jsonl("c.jsonl", changed)).hash != base
    assert load_golden(jsonl("d.jsonl", [ROWS[1], ROWS[0], ROWS[2]])).hash != base


def test_hash_is_a_known_constant():
    # Pins the canonical form: a silent change would split every dashboard's eval history.
    ds = examples_from_rows([{"id": "1", "input": "x", "expected": "y"}])
    import hashlib

    want = hashlib.sha256(b'{"expected":"y","id":"1","input":"x"}\n').hexdigest()
    assert ds.hash == "sha256:" + want


def test_head_rehashes_the_subset(jsonl):
    ds = load_golden(jsonl("g.jsonl", ROWS))
    sub = ds.head(2)
    assert len(sub) == 2 and sub.hash != ds.hash
    assert ds.head(10) is ds
    assert sub.hash == examples_from_rows(ROWS[:2]).hash


@pytest.mark.parametrize(
    ("lines", "match"),
    [
        (['{"input": "ok"}', "{not json"], r"g\.jsonl:2: invalid JSON"),
        (['{"input": "ok"}', "", '{"expected": "x"}'], r"g\.jsonl:3: the row has no 'input'"),
        (['["a"]'], r"g\.jsonl:1: expected a JSON object"),
        (['{"input": 3}'], r"g\.jsonl:1: 'input' must be a string"),
        (['{"input": [1, 2]}'], r"g\.jsonl:1: 'input' is a list but not of chat messages"),
        (['{"input": "x", "id": [1]}'], r"g\.jsonl:1: 'id' must be"),
        (['{"input": "x", "tags": [1]}'], r"g\.jsonl:1: 'tags' must be"),
        (['{"id": "x", "input": "a"}', '{"id": "x", "input": "b"}'], "id 'x' appears twice"),
        (["", "  "], "has no examples"),
    ],
)
def test_bad_golden_files_name_the_line(tmp_path: Path, lines: list[str], match: str):
    path = tmp_path / "g.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=match):
        load_golden(path)


def test_missing_and_non_utf8_files(tmp_path: Path):
    with pytest.raises(DataError, match="does not exist"):
        load_golden(tmp_path / "nope.jsonl")
    bad = tmp_path / "latin1.jsonl"
    bad.write_bytes('{"input": "café"}\n'.encode("latin-1"))
    with pytest.raises(DataError, match="not UTF-8"):
        load_golden(bad)


def test_results_round_trip_and_errors(tmp_path: Path):
    rows = [
        ExampleResult(id="1", scores={"em": 1.0}, labels={"em": "match"}, adapter_hash="sha256:" + "a" * 64),
        ExampleResult(id="2", scores={"em": 0.0}, error="prompt too long", output="ü"),
    ]
    path = write_results(tmp_path / "r" / "out.jsonl", rows)
    assert read_results(path) == rows
    assert "output" not in json.loads(path.read_text().splitlines()[0])
    path.write_text('{"id": "1", "scores": {"em": 1}}\n{"id": "2", "scores": {"em": "high"}}\n')
    with pytest.raises(DataError, match=r"out\.jsonl:2: score 'em'"):
        read_results(path)
    path.write_text('{"id": "1"}\n')
    with pytest.raises(DataError, match="'scores'"):
        read_results(path)
