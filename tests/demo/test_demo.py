"""The demo on tiny-random: a genuine regression, attributed to acme's v2 and nothing else."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.demo.conftest import DemoRun


def _store_hash(home: Path, ref: str) -> str:
    from trace_ptune.adapters.store import AdapterStore

    return AdapterStore(home / "adapters").resolve(ref).hash


def test_demo_names_acme_v2_as_the_regression(demo_run: DemoRun) -> None:
    rows = demo_run.output["regressions"]
    acme = [r for r in rows if r["tenant"] == "acme"]
    assert len(acme) == 1, rows
    row = acme[0]
    assert row["cause"] == "adapter_changed"
    assert row["deployment"] == "acme/support@prod"
    assert row["before_hash"] == _store_hash(demo_run.home, "demo/acme@1")
    assert row["after_hash"] == _store_hash(demo_run.home, "demo/acme@2")
    assert (row["after_adapter"], row["after_version"]) == ("demo/acme", 2)
    assert row["after_mean"] < row["before_mean"]
    assert row["p_value"] < 0.01
    assert row["n_before"] >= 30 and row["n_after"] >= 30


def test_demo_reports_nothing_for_the_unchanged_tenant(demo_run: DemoRun) -> None:
    assert [r for r in demo_run.output["regressions"] if r["tenant"] != "acme"] == []


def test_regression_is_genuine_v2_is_worse_on_the_eval_gate_and_in_production(demo_run: DemoRun) -> None:
    out = demo_run.output
    gates = {g["candidate"]: g for g in out["gates"]}
    assert gates["demo/acme@1"]["passed"], gates["demo/acme@1"]  # v1 learned: beats the base model
    assert gates["demo/acme@1"]["candidate_mean"] > gates["demo/acme@1"]["baseline_mean"]
    v2 = gates["demo/acme@2"]
    assert not v2["passed"] and v2["against"] == "demo/acme@1"
    assert v2["candidate_mean"] < v2["baseline_mean"]
    served = {(t["phase"], t["tenant"], t["adapter"]): t for t in out["traffic"]}
    assert served["v2", "acme", "demo/acme@2"]["accuracy"] < served["v1", "acme", "demo/acme@1"]["accuracy"]
    # the canary phase really split acme's traffic, and globex stayed on v1 throughout
    assert served["canary", "acme", "demo/acme@2"]["requests"] > 0
    assert served["canary", "acme", "demo/acme@1"]["requests"] > 0
    assert {a for (_, t, a) in served if t == "globex"} == {"demo/globex@1"}


def test_v2_continues_from_v1_in_the_store(demo_run: DemoRun) -> None:
    adapters = demo_run.output["adapters"]
    assert adapters["demo/acme@2"]["parent_hash"] == adapters["demo/acme@1"]["hash"]
    assert adapters["demo/acme@1"]["parent_hash"] is None


def test_demo_keeps_its_files_in_the_workdir_only(demo_run: DemoRun) -> None:
    assert demo_run.db.is_file() and demo_run.db.parent == demo_run.workdir
    assert (demo_run.home / "adapters").is_dir()
    assert not Path(str(demo_run.db) + ".collector.json").exists()  # the collector stopped cleanly


def test_refuses_a_non_empty_workdir(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from trace_ptune.cli.main import cli

    (tmp_path / "something").write_text("x")
    result = CliRunner().invoke(cli, ["demo", "--model", "tiny-random", "--workdir", str(tmp_path)])
    assert result.exit_code == 1
    assert "is not empty" in result.output
    assert "Traceback" not in result.output


def test_missing_bundled_split_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from trace_ptune.demo import datasets
    from trace_ptune.errors import DataError

    monkeypatch.setattr(datasets, "data_dir", lambda: tmp_path)
    with pytest.raises(DataError, match=r"acme_train_noisy\.jsonl is missing"):
        datasets.split_path("acme", "train_noisy")


def test_a_failure_is_one_sentence_and_the_collector_is_stopped(tmp_path: Path) -> None:
    import subprocess
    import sys

    workdir = tmp_path / "work"
    cmd = [sys.executable, "-m", "trace_ptune.cli.main", "demo", "-q", "--keep", "--workdir", str(workdir)]
    proc = subprocess.run(
        [*cmd, "--model", str(tmp_path / "no-such-model")], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 1
    assert proc.stderr.startswith("Error: No model found at") and "Traceback" not in proc.stderr
    log = (workdir / "collector.log").read_text()
    assert "collector stopped cleanly" in log  # SIGTERM: drained and checkpointed
    assert not (workdir / "traces.duckdb.collector.json").exists()
