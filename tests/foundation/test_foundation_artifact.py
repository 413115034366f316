"""The soft-prompt artifact: hash definition, save/load, integrity and compatibility checks."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from trace_ptune import semconv
from trace_ptune.adapters.artifact import MANIFEST_FIELDS, SoftPrompt
from trace_ptune.adapters.hashing import adapter_hash
from trace_ptune.errors import AdapterFormatError, AdapterIntegrityError, AdapterMismatchError
from trace_ptune.models import BaseModel


def test_hash_is_exactly_the_documented_bytes(make_sp) -> None:
    sp = make_sp(n=3)
    expected = hashlib.sha256(
        b"trace-ptune/adapter/v1\n"
        + b"method=prompt_tuning;num_virtual_tokens=3;hidden=64\n"
        + np.ascontiguousarray(sp.embeddings.numpy(), dtype="<f4").tobytes()
    ).hexdigest()
    assert sp.hash == "sha256:" + expected and sp.hash12 == expected[:12]
    prefix = make_sp(semconv.METHOD_PREFIX_TUNING, n=3)
    expected_prefix = hashlib.sha256(
        b"trace-ptune/adapter/v1\n"
        + b"method=prefix_tuning;num_virtual_tokens=3;hidden=64;layers=2;kv_heads=2;head_dim=16\n"
        + prefix.prefix_kv.numpy().astype("<f4").tobytes()
    ).hexdigest()
    assert prefix.hash == "sha256:" + expected_prefix


def test_hash_ignores_provenance_and_exact_dtype_casts(make_sp) -> None:
    plain = make_sp()
    labelled = make_sp(
        name="a", version=3, init="text", created_at="2020-01-01T00:00:00Z", base_model_name="x"
    )
    assert plain.hash == labelled.hash
    bf16 = plain.to(torch.bfloat16)
    assert bf16.hash == bf16.to(torch.float32).hash == bf16.to(torch.float64).hash
    assert make_sp(seed=1).hash != plain.hash
    assert make_sp(semconv.METHOD_P_TUNING).hash != plain.hash  # method is part of identity


def test_hash_follows_in_place_updates(make_sp) -> None:
    sp = make_sp()
    before = sp.hash
    with torch.no_grad():
        sp.embeddings[0, 0] += 1.0
    assert sp.hash != before


def test_p_tuning_encoder_is_not_part_of_the_hash(make_sp) -> None:
    a = make_sp(semconv.METHOD_P_TUNING, encoder_state={"w": torch.zeros(2)})
    b = make_sp(semconv.METHOD_P_TUNING, encoder_state={"w": torch.ones(2)})
    assert a.hash == b.hash


@pytest.mark.parametrize("method", semconv.METHODS)
def test_save_load_round_trip_keeps_everything(make_sp, tmp_path: Path, method: str) -> None:
    encoder = {"mlp.0.weight": torch.randn(4, 64)} if method == semconv.METHOD_P_TUNING else None
    sp = make_sp(method, name="acme/support", parent_hash="sha256:" + "0" * 64, train_dataset_hash="sha256:ab",
                 base_model_name="tiny-random", base_fingerprint="sha256:ff", init="random",
                 encoder_state=encoder, encoder_config={"encoder_hidden_size": 4} if encoder else None)  # fmt: skip
    loaded = SoftPrompt.load(sp.save(tmp_path / "a"))
    assert loaded.hash == sp.hash
    assert torch.equal(loaded.serving_tensor(), sp.serving_tensor())
    for key in ("method", "name", "parent_hash", "train_dataset_hash", "base_model_name", "base_fingerprint", "init",
                "num_layers", "num_kv_heads", "head_dim", "encoder_config", "created_at"):  # fmt: skip
        assert getattr(loaded, key) == getattr(sp, key), key
    if encoder:
        assert torch.equal(loaded.encoder_state["mlp.0.weight"], encoder["mlp.0.weight"])
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert set(manifest) == set(MANIFEST_FIELDS) and manifest["format_version"] == 1
    assert manifest["hash"] == sp.hash


def test_bf16_artifact_keeps_dtype_and_hash(make_sp, tmp_path: Path) -> None:
    sp = make_sp().to(torch.bfloat16)
    loaded = SoftPrompt.load(sp.save(tmp_path / "b"))
    assert loaded.dtype == torch.bfloat16 and loaded.hash == sp.hash


def test_tampered_tensor_is_refused(make_sp, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    directory = make_sp().save(tmp_path / "a")
    tensors = load_file(str(directory / "adapter.safetensors"))
    tensors["embeddings"][0, 0] += 0.5
    save_file(tensors, str(directory / "adapter.safetensors"))
    with pytest.raises(AdapterIntegrityError, match="does not match the digest"):
        SoftPrompt.load(directory)


def test_tampered_tensor_with_matching_file_digest_is_refused_by_the_hash(make_sp, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    directory = make_sp().save(tmp_path / "a")
    tensors = load_file(str(directory / "adapter.safetensors"))
    tensors["embeddings"][1, 1] = 7.0
    save_file(tensors, str(directory / "adapter.safetensors"))
    manifest = json.loads((directory / "manifest.json").read_text())
    digest = hashlib.sha256((directory / "adapter.safetensors").read_bytes()).hexdigest()
    manifest["files"]["adapter.safetensors"] = "sha256:" + digest
    (directory / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(AdapterIntegrityError, match="hashes to"):
        SoftPrompt.load(directory)


def test_truncated_file_is_refused(make_sp, tmp_path: Path) -> None:
    directory = make_sp().save(tmp_path / "a")
    path = directory / "adapter.safetensors"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(AdapterIntegrityError):
        SoftPrompt.load(directory)
    with pytest.raises(AdapterIntegrityError, match="not a readable safetensors file"):
        SoftPrompt.load(directory, verify=False)


def test_manifest_missing_a_field_is_a_format_error(make_sp, tmp_path: Path) -> None:
    directory = make_sp().save(tmp_path / "a")
    manifest = json.loads((directory / "manifest.json").read_text())
    del manifest["token_dim"]
    (directory / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(AdapterFormatError, match="missing the field 'token_dim'"):
        SoftPrompt.load(directory)


def test_newer_format_version_is_refused(make_sp, tmp_path: Path) -> None:
    directory = make_sp().save(tmp_path / "a")
    manifest = json.loads((directory / "manifest.json").read_text())
    manifest["format_version"] = 2
    (directory / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(AdapterFormatError, match="upgrade trace-ptune"):
        SoftPrompt.load(directory)


def test_saving_over_an_existing_artifact_replaces_it(make_sp, tmp_path: Path) -> None:
    make_sp(seed=1).save(tmp_path / "a")
    second = make_sp(seed=2)
    assert SoftPrompt.load(second.save(tmp_path / "a")).hash == second.hash
    assert [p.name for p in tmp_path.iterdir()] == ["a"]  # no staging leftovers


def test_wrong_tensor_shape_or_method_is_refused() -> None:
    with pytest.raises(AdapterFormatError, match="shape"):
        SoftPrompt("prompt_tuning", 3, 64, embeddings=torch.zeros(4, 64))
    with pytest.raises(AdapterFormatError, match="Unknown soft-prompt method 'lora'"):
        SoftPrompt("lora", 3, 64, embeddings=torch.zeros(3, 64))
    with pytest.raises(AdapterFormatError, match="needs prefix_kv"):
        SoftPrompt("prefix_tuning", 3, 64, embeddings=torch.zeros(3, 64))
    with pytest.raises(AdapterFormatError):
        adapter_hash("prefix_tuning", torch.zeros(2, 2, 2, 3, 16), num_virtual_tokens=3, hidden=64)


def test_other_base_fingerprint_is_refused_unless_overridden(
    make_sp, tiny: BaseModel, tiny64: BaseModel
) -> None:
    sp = make_sp(base_model_name="tiny-random", base_fingerprint=tiny.fingerprint)
    sp.check_compatible(tiny)
    with pytest.raises(AdapterMismatchError, match="allow_base_mismatch"):
        sp.check_compatible(tiny64)
    sp.check_compatible(tiny64, allow_base_mismatch=True)


def test_shape_mismatch_is_refused_even_with_the_override(tiny: BaseModel) -> None:
    wide = SoftPrompt("prompt_tuning", 2, 32, embeddings=torch.zeros(2, 32))
    with pytest.raises(AdapterMismatchError, match="token_dim 32"):
        wide.check_compatible(tiny, allow_base_mismatch=True)
    deep = SoftPrompt("prefix_tuning", 2, 64, prefix_kv=torch.zeros(3, 2, 2, 2, 16))
    with pytest.raises(AdapterMismatchError, match="layers, kv_heads, head_dim"):
        deep.check_compatible(tiny, allow_base_mismatch=True)
