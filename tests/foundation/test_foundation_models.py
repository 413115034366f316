"""Base models: the tiny-random preset, loading errors, fingerprints."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from trace_ptune import paths
from trace_ptune.errors import ModelLoadError
from trace_ptune.models import BaseModel, load_model, model_fingerprint
from trace_ptune.models import tiny as tiny_preset


def test_tiny_random_has_the_documented_shape_and_is_frozen(tiny: BaseModel) -> None:
    assert (tiny.hidden_size, tiny.num_layers, tiny.num_heads, tiny.num_kv_heads, tiny.head_dim) == (
        64,
        2,
        4,
        2,
        16,
    )
    assert tiny.vocab_size == 512 and len(tiny.tokenizer) <= 512
    assert tiny.name == "tiny-random" and tiny.fingerprint.startswith("sha256:")
    assert not any(p.requires_grad for p in tiny.model.parameters())
    assert not tiny.model.training
    assert tiny.tokenizer.padding_side == "left" and tiny.tokenizer.pad_token == "<pad>"
    assert tiny.dtype == torch.float32 and str(tiny.device) == "cpu"


def test_tiny_tokenizer_round_trips_text_and_has_a_chat_template(tiny: BaseModel) -> None:
    text = "Hello world, the movie was great! ünïcode 123"
    ids = tiny.tokenizer(text)["input_ids"]
    assert max(ids) < 512
    assert tiny.tokenizer.decode(ids) == text
    assert len(ids) < len(text.encode())  # merges are in use
    chat = tiny.tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert chat == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def test_tiny_random_does_not_touch_the_global_rng(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRACE_PTUNE_MODEL_CACHE", str(tmp_path))
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    load_model("tiny-random")  # builds from scratch into the empty cache
    assert torch.equal(torch.rand(3), expected)


def test_fingerprint_is_identical_in_another_process_building_from_scratch(
    tiny: BaseModel, make_sp, tmp_path: Path
) -> None:
    code = (
        "import json, torch\n"
        "from trace_ptune.models import load_model, model_fingerprint\n"
        "from trace_ptune.adapters.artifact import SoftPrompt\n"
        "b = load_model('tiny-random')\n"
        "g = torch.Generator().manual_seed(0)\n"
        "sp = SoftPrompt('prompt_tuning', 3, 64, embeddings=torch.randn(3, 64, generator=g))\n"
        "print(json.dumps([b.fingerprint, model_fingerprint(b.model, b.tokenizer), sp.hash]))\n"
    )
    env = {
        **os.environ,
        "TRACE_PTUNE_MODEL_CACHE": str(tmp_path / "fresh"),
        "TRACE_PTUNE_HOME": str(tmp_path),
    }
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120, check=True
    )
    cached, computed, adapter_hash = json.loads(out.stdout.strip().splitlines()[-1])
    assert cached == computed == tiny.fingerprint
    assert adapter_hash == make_sp().hash


def test_fingerprint_changes_with_dtype_weights_and_tokenizer(tiny: BaseModel, tiny64: BaseModel) -> None:
    assert tiny64.fingerprint != tiny.fingerprint
    assert load_model("tiny-random").fingerprint == tiny.fingerprint  # repeat loads agree
    assert model_fingerprint(tiny.model, tiny.tokenizer) == tiny.fingerprint
    weight = tiny.model.model.norm.weight
    with torch.no_grad():
        weight[0] += 1.0
        try:
            assert model_fingerprint(tiny.model, tiny.tokenizer) != tiny.fingerprint
        finally:
            weight[0] -= 1.0
    other_tok = tiny_preset.build_tokenizer()
    other_tok.add_tokens(["<extra>"])
    assert model_fingerprint(tiny.model, other_tok) != tiny.fingerprint


def test_fingerprint_is_cached_by_source_identity(tiny: BaseModel) -> None:
    cache = json.loads((paths.models_dir() / "fingerprints.json").read_text())
    assert tiny.fingerprint in cache.values()


def test_local_directory_loads_with_its_directory_name(tiny: BaseModel) -> None:
    directory = tiny_preset.cache_dir(paths.models_dir())
    base = load_model(str(directory))
    assert base.name == directory.name and base.fingerprint == tiny.fingerprint


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ("no-such-preset", "Unknown model preset 'no-such-preset'"),
        ("./missing/model", "No model found at './missing/model'"),
        ("/nonexistent/model.gguf", "No model found at '/nonexistent/model.gguf'"),
    ],
)
def test_bad_model_specs_give_one_clear_sentence(spec: str, needle: str) -> None:
    with pytest.raises(ModelLoadError) as info:
        load_model(spec)
    message = str(info.value)
    assert needle in message and message.count("\n") == 0 and message.endswith(".")


def test_directory_without_config_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"has no config\.json"):
        load_model(str(tmp_path))


def test_unreachable_hub_fails_fast_with_a_clear_message(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(ModelLoadError, match="Hub is unreachable"):
        load_model("some-org/some-model")


def test_bad_dtype_is_refused() -> None:
    with pytest.raises(ModelLoadError, match="Unknown dtype 'int3'"):
        load_model("tiny-random", dtype="int3")
