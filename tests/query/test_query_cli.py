"""``trace-ptune query`` through click: formats, exit codes, error sentences, cold start."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.query.traffic import Traffic, adapter_hash
from trace_ptune.cli.main import cli


def _run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, ["query", *args])
    return result.exit_code, result.stdout, result.stderr


def test_regressions_json_rows_are_the_library_rows(traffic_db: Path) -> None:
    from trace_ptune.query import regressions

    code, out, _ = _run("regressions", "--db", str(traffic_db), "--json")
    assert code == 0
    assert json.loads(out) == json.loads(json.dumps(regressions(db=str(traffic_db))))


def test_regressions_nl_csv_and_table(traffic: Traffic, traffic_db: Path) -> None:
    code, out, _ = _run("regressions", "--db", str(traffic_db), "--nl", "--metric", "f1")
    assert code == 0
    lines = [json.loads(line) for line in out.splitlines()]
    assert {(r["stream"], r["cause"]) for r in lines} == {
        ("acme/support@prod", "adapter_changed"),
        ("initech/qa@prod", "base_model_changed"),
    }
    code, out, _ = _run("regressions", "--db", str(traffic_db), "--csv", "--tenant", "umbrella")
    (row,) = list(csv.DictReader(io.StringIO(out)))
    assert row["cause"] == "unattributed" and row["after_hash"] == adapter_hash("umbrella-triage", 1)
    code, out, _ = _run("regressions", "--db", str(traffic_db), "--tenant", "acme")
    assert code == 0 and "acme-support@1" in out and "adapter_changed" in out


def test_fail_on_regression_sets_the_exit_code(traffic_db: Path) -> None:
    code, _, err = _run("regressions", "--db", str(traffic_db), "--fail-on-regression", "--json")
    assert code == 1 and "regression(s) found" in err
    code, _, err = _run("regressions", "--db", str(traffic_db), "--fail-on-regression", "--tenant", "stark")
    assert code == 0 and "No significant regressions" in err


def test_errors_are_one_sentence_with_exit_1(tmp_path: Path, traffic_db: Path) -> None:
    cases = [
        (["regressions", "--db", str(tmp_path / "none.duckdb")], "No trace database"),
        (["regressions", "--db", str(traffic_db), "--since", "someday"], "Cannot read the time"),
        (["lineage", "no-such-adapter", "--db", str(traffic_db)], "No adapter matches"),
        (["sql", "DROP TABLE spans", "--db", str(traffic_db)], "DROP"),
        (["trace", "zz", "--db", str(traffic_db)], "not a trace id"),
        (["regressions", "--collector", "http://127.0.0.1:9"], "collector"),
        (["sql", "SELECT 1", "--db", str(tmp_path / "none.duckdb")], "`trace-ptune collector run`"),
        (["sql", "SELECT 1", "--collector", "garbage"], "not an http(s) URL"),
    ]
    for args, fragment in cases:
        code, _, err = _run(*args)
        assert code == 1, args
        assert fragment in err, (args, err)
        assert "Traceback" not in err
        assert len(err.strip().splitlines()) == 1, err


def test_json_and_csv_cannot_be_combined(traffic_db: Path) -> None:
    code, _, err = _run("adapters", "--db", str(traffic_db), "--json", "--csv")
    assert code == 2 and "cannot be used together" in err


def test_read_commands_in_every_format(traffic: Traffic, traffic_db: Path) -> None:
    db = ["--db", str(traffic_db)]
    code, out, _ = _run("adapters", *db, "--json")
    assert code == 0 and len(json.loads(out)) == len({r.adapter_hash for r in traffic.requests})
    code, out, _ = _run("adapters", *db, "--name", "acme-support")
    assert code == 0 and "acme-support@2" in out and "exact_match=" in out
    code, out, _ = _run("lineage", "acme-support@2", *db, "--csv")
    stages = [r["stage"] for r in csv.DictReader(io.StringIO(out))]
    assert code == 0 and stages.count("train") == 2 and "production" in stages
    code, out, _ = _run("traces", *db, "--adapter", "acme-support@2", "--limit", "5", "--nl")
    assert code == 0 and len(out.splitlines()) == 5
    trace_id = json.loads(out.splitlines()[0])["trace_id"]
    code, out, _ = _run("trace", trace_id, *db)
    assert code == 0 and "text_completion smollm2-135m" in out and "score exact_match" in out
    code, out, _ = _run("trace", trace_id, *db, "--json")
    assert code == 0 and json.loads(out)[0]["trace_id"] == trace_id
    code, out, _ = _run("sql", "SELECT count(*) AS n FROM spans", *db, "--json")
    assert code == 0 and json.loads(out)[0]["n"] >= len(traffic.requests)
    code, out, _ = _run("compare", "acme-support@1", "acme-support@2", *db, "--json", "--metric", "f1")
    assert code == 0 and [r["verdict"] for r in json.loads(out)] == ["worse"]


def test_source_resolution_honours_the_environment(monkeypatch: pytest.MonkeyPatch, traffic_db: Path) -> None:
    # TRACE_PTUNE_COLLECTOR wins over the default database
    monkeypatch.setenv("TRACE_PTUNE_COLLECTOR", "http://127.0.0.1:9")
    code, _, err = _run("adapters")
    assert code == 1 and "127.0.0.1:9" in err
    monkeypatch.delenv("TRACE_PTUNE_COLLECTOR")
    # without anything, the default database under TRACE_PTUNE_HOME is used
    code, _, err = _run("adapters")
    assert code == 1 and "traces.duckdb" in err


def test_query_help_is_fast_and_loads_nothing_heavy() -> None:
    code = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from trace_ptune.cli.main import cli\n"
        "r = CliRunner().invoke(cli, ['query', '--help'])\n"
        "assert r.exit_code == 0, r.output\n"
        "r = CliRunner().invoke(cli, ['query', 'regressions', '--help'])\n"
        "assert r.exit_code == 0 and '--fail-on-regression' in r.output, r.output\n"
        "heavy = [m for m in ('torch', 'transformers', 'scipy', 'duckdb', 'numpy') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_query_library_does_not_import_torch() -> None:
    code = (
        "import sys, trace_ptune.query, trace_ptune.query.compare, trace_ptune.query.lineage\n"
        "import trace_ptune.query.traces, trace_ptune.query.adapters\n"
        "print(','.join(m for m in ('torch', 'transformers', 'scipy') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
