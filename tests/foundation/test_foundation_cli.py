"""``trace-ptune adapters`` and ``trace-ptune models`` through click's CliRunner."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from trace_ptune.adapters.store import AdapterStore
from trace_ptune.cli.main import cli
from trace_ptune.models import BaseModel


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.stdout, result.stderr


def run_json(*args: str) -> list[dict]:
    code, out, err = run(*args, "--json")
    assert code == 0, err
    return json.loads(out)


def test_models_info_prints_name_fingerprint_and_shape(tiny: BaseModel) -> None:
    (row,) = run_json("models", "info", "tiny-random")
    assert row["name"] == "tiny-random" and row["fingerprint"] == tiny.fingerprint
    assert (row["hidden_size"], row["num_layers"], row["num_kv_heads"], row["dtype"]) == (64, 2, 2, "float32")
    assert [r["name"] for r in run_json("models", "presets")] == ["tiny-random", "smollm2-135m"]


def test_adapters_list_show_promote_rollback(make_sp, tiny: BaseModel) -> None:
    store = AdapterStore()
    v1 = store.save(
        make_sp(seed=1, base_model_name="tiny-random", base_fingerprint=tiny.fingerprint), "acme/bot"
    )
    v2 = store.save(make_sp(seed=2, parent_hash=v1.hash), "acme/bot")
    rows = run_json("adapters", "list")
    assert [(r["name"], r["version"], r["hash"], r["latest"]) for r in rows] == [
        ("acme/bot", 1, v1.hash, False),
        ("acme/bot", 2, v2.hash, True),
    ]
    (shown,) = run_json("adapters", "show", "acme/bot@1")
    assert (
        shown["hash"] == v1.hash and shown["base_fingerprint"] == tiny.fingerprint and shown["version"] == 1
    )
    (state,) = run_json("adapters", "promote", "acme/bot@1", "acme/bot@prod", "--tenant", "acme")
    assert state["adapter_hash"] == v1.hash and state["tenant"] == "acme"
    # the spelling: --deployment as an option
    (state,) = run_json("adapters", "promote", v2.hash12, "--deployment", "acme/bot@prod", "--canary", "25")
    assert (state["canary_hash"], state["canary_percent"]) == (v2.hash, 25.0)
    (state,) = run_json("adapters", "rollback", "acme/bot@prod")
    assert state["canary_hash"] is None
    assert [d["deployment"] for d in run_json("adapters", "deployments")] == ["acme/bot@prod"]
    history = run_json("adapters", "deployments", "--history", "acme/bot@prod")
    assert [h["action"] for h in history] == ["promote", "canary", "rollback"]
    (verified,) = run_json("adapters", "verify", "acme/bot@1", "--base", "tiny-random")
    assert verified == {
        "ref": "acme/bot@1",
        "name": "acme/bot",
        "version": 1,
        "hash": v1.hash,
        "status": "ok",
    }
    code, out, _ = run("adapters", "list")  # the human table
    assert code == 0 and v1.hash12 in out


def test_import_and_export_peft_round_trip(make_sp, tiny: BaseModel, tmp_path: Path) -> None:
    from trace_ptune.adapters.peft_interop import export_peft

    sp = make_sp()
    export_peft(sp, tmp_path / "peft", tiny)
    (row,) = run_json("adapters", "import-peft", str(tmp_path / "peft"), "--name", "imported")
    assert row["hash"] == sp.hash and row["name"] == "imported" and row["version"] == 1
    code, out, _ = run(
        "adapters", "export-peft", "imported", str(tmp_path / "again"), "--base", "tiny-random"
    )
    assert code == 0 and out.strip() == str(tmp_path / "again")
    assert (tmp_path / "again" / "adapter_model.safetensors").is_file()


def test_store_option_points_at_another_root(make_sp, tmp_path: Path) -> None:
    AdapterStore(tmp_path / "elsewhere").save(make_sp(), "x")
    assert run_json("adapters", "list") == []
    assert [r["name"] for r in run_json("adapters", "--store", str(tmp_path / "elsewhere"), "list")] == ["x"]


def _truncate(directory: Path) -> None:
    path = directory / "adapter.safetensors"
    path.write_bytes(path.read_bytes()[:40])


def _drop_field(directory: Path) -> None:
    manifest = json.loads((directory / "manifest.json").read_text())
    del manifest["method"]
    (directory / "manifest.json").write_text(json.dumps(manifest))


def _change_hash(directory: Path) -> None:
    manifest = json.loads((directory / "manifest.json").read_text())
    manifest["hash"] = "sha256:" + "1" * 64
    (directory / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize(
    ("damage", "needle"),
    [
        (_truncate, "does not match the digest"),
        (_drop_field, "missing the field 'method'"),
        (_change_hash, "but its manifest says 111111111111"),
    ],
    ids=["corrupt-safetensors", "manifest-missing-field", "hash-mismatch"],
)
def test_damaged_artifacts_fail_verify_with_one_sentence(
    make_sp, tmp_path: Path, damage, needle: str
) -> None:
    directory = make_sp().save(tmp_path / "a")
    damage(directory)
    code, out, err = run("adapters", "verify", str(directory))
    assert code == 1 and out == ""
    assert err.startswith("Error: ") and needle in err and err.strip().count("\n") == 0


def test_other_base_fails_verify_unless_allowed(make_sp, tiny: BaseModel) -> None:
    AdapterStore().save(make_sp(base_model_name="other", base_fingerprint="sha256:" + "e" * 64), "foreign")
    code, _, err = run("adapters", "verify", "foreign", "--base", "tiny-random")
    assert code == 1 and "was trained on base 'other'" in err and err.strip().count("\n") == 0
    code, _, _ = run("adapters", "verify", "foreign", "--base", "tiny-random", "--allow-base-mismatch")
    assert code == 0


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("models", "info", "./missing-model"), "No model found at './missing-model'"),
        (("models", "info", "no-such-preset"), "Unknown model preset 'no-such-preset'"),
        (("adapters", "show", "nothing"), "No adapter, version, deployment or hash matches 'nothing'"),
        (("adapters", "rollback", "nowhere"), "No deployment 'nowhere'"),
    ],
)
def test_bad_input_gives_one_sentence_and_exit_1(args: tuple[str, ...], needle: str) -> None:
    code, out, err = run(*args)
    assert code == 1 and out == ""
    assert err.startswith("Error: ") and needle in err and err.strip().count("\n") == 0


def test_unsupported_peft_type_fails_import(tmp_path: Path) -> None:
    (tmp_path / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA"}))
    code, _, err = run("adapters", "import-peft", str(tmp_path), "--name", "x")
    assert code == 1 and "PEFT 'LORA' adapter" in err and err.strip().count("\n") == 0


def test_verify_without_refs_checks_the_whole_store(make_sp) -> None:
    store = AdapterStore()
    good = store.save(make_sp(seed=1), "good")
    bad = store.save(make_sp(seed=2), "bad")
    assert [r["status"] for r in run_json("adapters", "verify")] == ["ok", "ok"]
    _truncate(store.object_dir(bad.hash))
    code, out, err = run("adapters", "verify", "--json")
    rows = {r["ref"]: r["status"] for r in json.loads(out)}
    assert code == 1 and "1 of 2 adapters failed verification" in err
    assert rows[good.hash] == "ok" and "does not match the digest" in rows[bad.hash]
