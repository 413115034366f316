"""``trace-ptune generate``: prompts in one batch, adapters mapped to prompts, JSON output."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from trace_ptune import semconv
from trace_ptune.adapters.store import AdapterStore
from trace_ptune.cli.main import cli
from trace_ptune.runtime import Engine

from .conftest import make_adapter
from .reference import reference_greedy


@pytest.fixture
def stored(base64, tmp_path):
    """Two adapters in a store under tmp_path (the CLI loads tiny-random in float64)."""
    store = AdapterStore(tmp_path / "store")
    a = store.save(make_adapter(base64, semconv.METHOD_PROMPT_TUNING, 4, seed=1), "alpha")
    b = store.save(make_adapter(base64, semconv.METHOD_PREFIX_TUNING, 3, seed=2), "beta")
    return tmp_path / "store", a, b


def _run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, ["generate", "--model", "tiny-random", "--dtype", "float64", *args])
    return result.exit_code, result.stdout, result.stderr


def test_two_adapters_in_one_batch_give_their_reference_outputs(base64, stored):
    root, a, b = stored
    code, out, err = _run(
        "--store", str(root), "-a", "alpha", "-a", "beta", "-a", "-",
        "--max-new-tokens", "5", "--tenant", "acme", "--json",
        "hello world", "the cat", "yes",
    )  # fmt: skip
    assert code == 0, err
    rows = json.loads(out)
    assert [r["adapter"] for r in rows] == ["alpha", "beta", None]
    assert [r["adapter_hash"] for r in rows] == [a.hash, b.hash, None]
    engine = Engine(base64, store=object())
    for row, sp in zip(rows, [a, b, None], strict=True):
        assert row["token_ids"] == reference_greedy(base64, sp, engine.encode(row["prompt"]), 5)
        assert row["finish_reason"] == "length" and row["error"] is None
    assert rows[0]["token_ids"] != rows[1]["token_ids"]
    assert rows[0]["model"] == f"tiny-random+ptune:{a.hash12}"


def test_one_adapter_applies_to_every_prompt_and_directories_work(base64, tmp_path):
    sp = make_adapter(base64, semconv.METHOD_P_TUNING, 2, seed=5, name="dirbot")
    sp.save(tmp_path / "dirbot")
    code, out, err = _run("-a", str(tmp_path / "dirbot"), "--max-new-tokens", "2", "--json", "one", "two")
    assert code == 0, err
    rows = json.loads(out)
    assert {r["adapter_hash"] for r in rows} == {sp.hash}


def test_adapter_count_must_match_prompts():
    code, _, err = _run("-a", "x", "-a", "y", "one", "two", "three")
    assert code == 2
    assert "2 --adapter options for 3 prompts" in err


def test_unknown_adapter_fails_its_row_and_exits_1(stored):
    root, _, _ = stored
    code, out, err = _run("--store", str(root), "-a", "alpha", "-a", "ghost", "--json", "one", "two")
    assert code == 1
    rows = json.loads(out)
    assert rows[0]["error"] is None and rows[0]["output_tokens"] == 32
    assert rows[1]["finish_reason"] == "error" and "ghost" in rows[1]["error"]
    assert "ghost" in err


def test_table_output_shows_the_text(stored):
    root, _, _ = stored
    code, out, err = _run("--store", str(root), "-a", "alpha", "--max-new-tokens", "3", "hello")
    assert code == 0, err
    assert "hello" in out and "length" in out
