"""Training on decoders beyond Llama: the soft prompt learns, the base stays frozen, and the
trained adapter serves. Falcon keeps one K/V head under multi-query attention whatever its
config's ``num_kv_heads`` says (a prefix shaped from the config would not fit its cache), and
neither Falcon nor GPT-NeoX calls its decoder ``model``."""

from __future__ import annotations

import pytest
import torch

from tests.tiny_arch import build_tiny
from trace_ptune import semconv
from trace_ptune.errors import ModelLoadError
from trace_ptune.models import load_model
from trace_ptune.runtime import Engine, GenerationRequest
from trace_ptune.tuning import TrainConfig, train


@pytest.fixture(scope="module", params=["falcon", "gpt_neox"])
def arch_dir(request, tmp_path_factory, tiny):
    overrides = {"multi_query": True} if request.param == "falcon" else {}
    return build_tiny(request.param, tiny.tokenizer, tmp_path_factory.mktemp(request.param), **overrides)


@pytest.mark.parametrize("method", semconv.METHODS)
def test_every_method_trains_and_serves_on_other_architectures(arch_dir, toy_data, method):
    base = load_model(str(arch_dir))
    before = {k: v.detach().clone() for k, v in base.model.state_dict().items()}
    train_path, eval_path = toy_data
    config = TrainConfig(
        model=str(arch_dir), data=str(train_path), eval=str(eval_path), name=f"arch-{method}",
        method=method, virtual_tokens=4, steps=12, lr=0.3, eval_every=6, quiet=True,
    )  # fmt: skip
    result = train(config, base)
    history = result.metrics["loss_history"]
    assert min(history[-3:]) < history[0]
    assert all(torch.equal(before[k], v) for k, v in base.model.state_dict().items())
    out = Engine(base).generate(
        [GenerationRequest("the movie was good", adapter=f"arch-{method}@1", max_new_tokens=3)]
    )
    assert out[0].error is None and out[0].token_ids and out[0].virtual_tokens == 4


def test_training_an_alibi_model_is_refused_before_any_step(tmp_path, toy_data, tiny):
    bloom = build_tiny("bloom", tiny.tokenizer, tmp_path / "bloom", n_layer=2, n_head=4)
    train_path, eval_path = toy_data
    config = TrainConfig(
        model=str(bloom), data=str(train_path), eval=str(eval_path), name="b", steps=2, quiet=True
    )
    with pytest.raises(ModelLoadError, match="uses ALiBi attention biases"):
        train(config)


def test_peft_adapters_of_falcon_import_or_are_refused_with_the_reason(arch_dir, tmp_path):
    from peft import PrefixTuningConfig, PromptTuningConfig, TaskType, get_peft_model

    from tests.runtime.reference import assert_rows_match_reference
    from trace_ptune.adapters import import_peft
    from trace_ptune.errors import AdapterMismatchError

    base = load_model(str(arch_dir), dtype=torch.float64)
    for config_class in (PromptTuningConfig, PrefixTuningConfig):
        peft_model = get_peft_model(
            load_model(str(arch_dir), dtype=torch.float64).model,
            config_class(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=4),
        )
        with torch.no_grad():
            for p in peft_model.parameters():
                if p.requires_grad:
                    p.normal_(0, 0.5)
        out = tmp_path / config_class.__name__
        peft_model.save_pretrained(out)
        if config_class is PrefixTuningConfig and arch_dir.name.startswith("falcon"):
            # PEFT sizes the prefix from config fields: 4 K/V heads for a cache that holds one
            with pytest.raises(AdapterMismatchError, match="multi-query caches such as Falcon's"):
                import_peft(out, base=base)
            continue
        sp = import_peft(out, base=base)
        sp.name = "imported"
        plan = [(a, p, 5) for p in ("hello world", "one two three four five") for a in (None, "imported")]
        assert_rows_match_reference(base, {"imported": sp}, plan)
