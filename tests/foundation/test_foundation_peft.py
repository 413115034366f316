"""PEFT interop: our exports load in PEFT with identical logits; PEFT adapters import exactly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from peft import PeftModel, PrefixTuningConfig, PromptEncoderConfig, PromptTuningConfig, get_peft_model
from transformers import DynamicCache

from trace_ptune import semconv
from trace_ptune.adapters.artifact import SoftPrompt
from trace_ptune.adapters.peft_interop import export_peft, import_peft
from trace_ptune.errors import AdapterFormatError
from trace_ptune.models import BaseModel, load_model

IDS = torch.tensor([[5, 40, 50, 60, 70, 80], [9, 300, 301, 7, 8, 9]])


def fresh64() -> BaseModel:
    """A model instance of our own: PEFT wraps the model it is given."""
    return load_model("tiny-random", dtype=torch.float64)


def our_logits(base: BaseModel, sp: SoftPrompt) -> torch.Tensor:
    """Reference no-cache forward: embeddings prepended, or the prefix as a key/value cache."""
    model, batch = base.model, IDS.shape[0]
    with torch.no_grad():
        if sp.method == semconv.METHOD_PREFIX_TUNING:
            kv = sp.prefix_kv.to(torch.float64)
            layers = tuple((kv[i, 0].expand(batch, -1, -1, -1), kv[i, 1].expand(batch, -1, -1, -1))
                           for i in range(kv.shape[0]))  # fmt: skip
            mask = torch.ones(batch, sp.num_virtual_tokens + IDS.shape[1])
            return model(input_ids=IDS, past_key_values=DynamicCache(layers), attention_mask=mask).logits
        prompt = sp.embeddings.to(torch.float64).expand(batch, -1, -1)
        embeds = torch.cat([prompt, model.get_input_embeddings()(IDS)], dim=1)
        return model(inputs_embeds=embeds, use_cache=False).logits[:, sp.num_virtual_tokens :]


def peft_logits(peft_model: PeftModel) -> torch.Tensor:
    peft_model.eval()
    with torch.no_grad():
        logits = peft_model(input_ids=IDS, attention_mask=torch.ones_like(IDS), use_cache=False).logits
    return logits[:, -IDS.shape[1] :]


@pytest.mark.parametrize("method", semconv.METHODS)
def test_peft_loads_our_export_with_identical_logits(make_sp, tmp_path: Path, method: str) -> None:
    base = fresh64()
    sp = make_sp(method, n=4, base_model_name="tiny-random", base_fingerprint=base.fingerprint)
    expected = our_logits(base, sp)
    directory = export_peft(sp, tmp_path / "peft", base)
    assert json.loads((directory / "adapter_config.json").read_text())["peft_type"] in (
        "PROMPT_TUNING", "PREFIX_TUNING", "P_TUNING")  # fmt: skip
    got = peft_logits(PeftModel.from_pretrained(base.model, str(directory)))
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-10)


@pytest.mark.parametrize("method", semconv.METHODS)
def test_hash_survives_export_import_and_bf16(make_sp, tiny: BaseModel, tmp_path: Path, method: str) -> None:
    encoder = {"mlp_head.0.weight": torch.randn(8, 64)} if method == semconv.METHOD_P_TUNING else None
    sp = make_sp(method, name="acme/x", base_fingerprint=tiny.fingerprint, encoder_state=encoder)
    once = import_peft(export_peft(sp, tmp_path / "a", tiny))
    twice = import_peft(export_peft(once, tmp_path / "b", tiny))
    assert once.hash == twice.hash == sp.hash
    assert twice.name == "acme/x" and twice.base_fingerprint == tiny.fingerprint
    if encoder:
        assert torch.equal(twice.encoder_state["mlp_head.0.weight"], encoder["mlp_head.0.weight"])
    half = sp.to(torch.bfloat16)
    assert (
        import_peft(export_peft(half, tmp_path / "c", tiny)).hash == half.hash == half.to(torch.float32).hash
    )


def _peft_native(base: BaseModel, config, tmp_path: Path) -> tuple[Path, torch.Tensor]:
    torch.manual_seed(0)
    model = get_peft_model(base.model, config)
    directory = tmp_path / "native"
    model.save_pretrained(str(directory))
    return directory, model


@pytest.mark.parametrize(
    "config",
    [
        PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=3),
        PromptEncoderConfig(task_type="CAUSAL_LM", num_virtual_tokens=3, encoder_hidden_size=16),
        PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=3),
        PrefixTuningConfig(
            task_type="CAUSAL_LM", num_virtual_tokens=3, prefix_projection=True, encoder_hidden_size=8
        ),
    ],
    ids=["prompt", "p_tuning", "prefix", "prefix_projection"],
)
def test_peft_native_adapters_import_with_identical_logits(config, tmp_path: Path) -> None:
    base = fresh64()
    directory, _ = _peft_native(base, config, tmp_path)
    sp = import_peft(directory, base=base)
    reference = fresh64()
    got = peft_logits(PeftModel.from_pretrained(reference.model, str(directory)))
    torch.testing.assert_close(got, our_logits(fresh64(), sp), rtol=0, atol=1e-10)


def test_prefix_encoder_weights_are_run_to_get_the_serving_prefix(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    base = fresh64()
    config = PrefixTuningConfig(
        task_type="CAUSAL_LM", num_virtual_tokens=3, prefix_projection=True, encoder_hidden_size=8
    )
    directory, model = _peft_native(base, config, tmp_path)
    encoder = model.prompt_encoder["default"]
    weights = {
        f"prompt_encoder.{k}": v.detach().float().contiguous() for k, v in encoder.state_dict().items()
    }
    save_file(weights, str(directory / "adapter_model.safetensors"))
    sp = import_peft(directory, base=base)
    with torch.no_grad():
        flat = encoder(torch.arange(3)[None]).float()[0]
    torch.testing.assert_close(sp.prefix_kv.permute(3, 0, 1, 2, 4).reshape(3, -1), flat)


def test_unsupported_peft_type_is_refused_by_name(tmp_path: Path) -> None:
    (tmp_path / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 8}))
    with pytest.raises(AdapterFormatError, match="PEFT 'LORA' adapter; only PROMPT_TUNING"):
        import_peft(tmp_path)


def test_pickled_peft_weights_are_never_loaded(tmp_path: Path) -> None:
    (tmp_path / "adapter_config.json").write_text(
        json.dumps({"peft_type": "PROMPT_TUNING", "num_virtual_tokens": 2})
    )
    (tmp_path / "adapter_model.bin").write_bytes(b"not loaded")
    with pytest.raises(AdapterFormatError, match="pickle"):
        import_peft(tmp_path)


def test_foreign_prefix_tuning_without_a_base_asks_for_one(tmp_path: Path) -> None:
    base = fresh64()
    directory, _ = _peft_native(
        base, PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=2), tmp_path
    )
    with pytest.raises(AdapterFormatError, match="--base"):
        import_peft(directory)


def test_missing_directory_and_config_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(AdapterFormatError, match="No PEFT adapter directory"):
        import_peft(tmp_path / "nope")
    with pytest.raises(AdapterFormatError, match=r"has no adapter_config\.json"):
        import_peft(tmp_path)
