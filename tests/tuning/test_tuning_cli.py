"""``trace-ptune train`` end to end through click."""

from __future__ import annotations

import json

from click.testing import CliRunner

from trace_ptune.adapters.store import AdapterStore
from trace_ptune.cli.main import cli

from .conftest import toy_rows, write_jsonl


def test_train_command_prints_hash_name_version_and_store(toy_data) -> None:
    train_path, eval_path = toy_data
    args = ["train", "--model", "tiny-random", "--data", str(train_path), "--eval", str(eval_path), "--name", "cli-demo",
            "--virtual-tokens", "4", "--steps", "3", "--quiet"]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    sp = AdapterStore().resolve("cli-demo@1")
    assert f"adapter  {sp.hash}" in result.output
    assert "name     cli-demo@1" in result.output
    assert "stored   " in result.output and sp.hash.removeprefix("sha256:") in result.output

    again = CliRunner().invoke(cli, [*args, "--json"])
    assert again.exit_code == 0, again.output
    summary = json.loads(again.output)
    # Same seed and data: the same adapter, so the store keeps version 1.
    assert summary["adapter_hash"] == sp.hash and summary["ref"] == "cli-demo@1" and summary["steps"] == 3


def test_train_command_reports_bad_data_in_one_line(tmp_path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"input": "a", "target": "b"}\nnot json\n', encoding="utf-8")
    result = CliRunner().invoke(
        cli, ["train", "--model", "tiny-random", "--data", str(bad), "--name", "x", "--quiet"]
    )
    assert result.exit_code == 1
    assert "line 2: not valid JSON" in result.output and "Traceback" not in result.output


def test_train_command_refuses_bad_options(tmp_path) -> None:
    data = write_jsonl(tmp_path / "t.jsonl", toy_rows(4))
    result = CliRunner().invoke(
        cli, ["train", "--model", "tiny-random", "--data", str(data), "--name", "bad@name", "--quiet"]
    )
    assert result.exit_code == 1 and "Adapter name 'bad@name' is invalid" in result.output
    result = CliRunner().invoke(
        cli,
        [
            "train",
            "--model",
            "tiny-random",
            "--data",
            str(data),
            "--name",
            "ok",
            "--init",
            "words",
            "--quiet",
        ],
    )
    assert result.exit_code == 1 and "init 'words' is unknown" in result.output
    result = CliRunner().invoke(cli, ["train", "--model", "tiny-random", "--data", str(data), "--quiet"])
    assert result.exit_code == 1 and "pass --name" in result.output and "Traceback" not in result.output


def test_train_command_multitenant(tmp_path) -> None:
    rows = toy_rows(6, tenant="acme") + toy_rows(6, start=40, tenant="globex")
    data = write_jsonl(tmp_path / "m.jsonl", rows)
    result = CliRunner().invoke(
        cli,
        [
            "train",
            "--model",
            "tiny-random",
            "--data",
            str(data),
            "--name",
            "team",
            "--multitenant",
            "tenant",
            "--steps",
            "2",
            "--virtual-tokens",
            "3",
            "--quiet",
        ],
    )
    assert result.exit_code == 0, result.output
    assert {r["name"] for r in AdapterStore().list()} >= {"team/acme", "team/globex"}
