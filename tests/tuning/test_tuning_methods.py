"""The method modules and the target-only loss agree with plain transformers computations."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from trace_ptune import semconv
from trace_ptune.tuning.data import collate, encode_rows
from trace_ptune.tuning.evaluation import greedy_generate
from trace_ptune.tuning.methods import (
    PTuning,
    build_module,
    decoder_hidden,
    init_embeddings,
    prefix_from_tokens,
    target_losses,
)

from .conftest import toy_rows


def _batch(base, n=4):
    examples, _ = encode_rows(toy_rows(n), base.tokenizer, max_length=64)
    return collate(examples, base.tokenizer.pad_token_id)


def test_target_only_loss_equals_full_logits_loss(tiny64) -> None:
    model = tiny64.model
    batch = _batch(tiny64)
    g = torch.Generator().manual_seed(0)
    prompt = init_embeddings(model, tiny64.tokenizer, "vocab", 5, g)
    B = batch["input_ids"].shape[0]
    prompts = prompt.unsqueeze(0).expand(B, *prompt.shape)
    losses, _ = target_losses(model, semconv.METHOD_PROMPT_TUNING, prompts, batch)
    # Reference: the full causal-LM head over every position, labels -100 off target.
    embeds = torch.cat([prompts, model.get_input_embeddings()(batch["input_ids"])], dim=1)
    mask = torch.cat([torch.ones(B, 5, dtype=torch.long), batch["attention_mask"]], dim=1)
    labels = batch["input_ids"].masked_fill(~batch["target_mask"], -100)
    labels = torch.cat([torch.full((B, 5), -100), labels], dim=1)
    out = model(inputs_embeds=embeds, attention_mask=mask, labels=labels)
    assert torch.allclose(losses.mean(), out.loss, atol=1e-10)


def test_prefix_from_real_tokens_reproduces_the_full_forward(tiny64) -> None:
    """A prefix made of a real prompt's keys/values must act exactly like that prompt."""
    model = tiny64.model
    prefix_ids = [20, 30, 40, 50]
    text = torch.tensor([[60, 70, 80, 90, 100]])
    kv = prefix_from_tokens(model, prefix_ids)  # (L, 2, KV, n, D)
    d = model.config
    assert kv.shape == (
        d.num_hidden_layers,
        2,
        d.num_key_value_heads,
        4,
        d.hidden_size // d.num_attention_heads,
    )
    hidden = decoder_hidden(model, semconv.METHOD_PREFIX_TUNING, kv.unsqueeze(0), text, torch.ones_like(text))
    full = model.model(input_ids=torch.cat([torch.tensor([prefix_ids]), text], dim=1)).last_hidden_state
    assert torch.allclose(hidden, full[:, 4:], atol=1e-10)


def test_prompt_tuning_with_token_embeddings_equals_those_tokens(tiny64) -> None:
    model = tiny64.model
    ids = [20, 30, 40]
    text = torch.tensor([[60, 70, 80]])
    prompt = model.get_input_embeddings().weight[ids]
    hidden = decoder_hidden(
        model, semconv.METHOD_PROMPT_TUNING, prompt.unsqueeze(0), text, torch.ones_like(text)
    )
    full = model.model(input_ids=torch.tensor([[*ids, 60, 70, 80]])).last_hidden_state
    assert torch.allclose(hidden, full, atol=1e-10)


def test_right_padding_does_not_change_a_rows_loss(tiny64) -> None:
    model = tiny64.model
    examples, _ = encode_rows(toy_rows(3), tiny64.tokenizer, max_length=64)
    g = torch.Generator().manual_seed(1)
    prompt = init_embeddings(model, tiny64.tokenizer, "random", 4, g)
    alone, _ = target_losses(model, semconv.METHOD_PROMPT_TUNING, prompt[None], collate(examples[:1], 0))
    batch = collate(examples, 0)
    mixed, rows = target_losses(model, semconv.METHOD_PROMPT_TUNING, prompt.expand(3, *prompt.shape), batch)
    assert torch.allclose(alone, mixed[rows == 0], atol=1e-10)


@pytest.mark.parametrize("method", [semconv.METHOD_PROMPT_TUNING, semconv.METHOD_PREFIX_TUNING])
def test_batched_greedy_decoding_matches_row_by_row(tiny64, method) -> None:
    g = torch.Generator().manual_seed(3)
    module = build_module(method, tiny64.model, tiny64.tokenizer, init="vocab", n=4, generator=g)
    prompts = [[20, 30, 40, 50, 60], [70, 80], [90, 100, 110]]
    prompt = module.serving().detach()
    kw = {"max_new_tokens": 6, "eos_id": None, "pad_id": 0}
    batched = greedy_generate(tiny64.model, method, prompt, prompts, **kw)
    single = [greedy_generate(tiny64.model, method, prompt, [p], **kw)[0] for p in prompts]
    assert batched == single
    # And the first generated token is the argmax of the training forward's last position.
    text = torch.tensor([prompts[0]])
    hidden = decoder_hidden(tiny64.model, method, prompt.unsqueeze(0), text, torch.ones_like(text))
    assert int(tiny64.model.lm_head(hidden[0, -1]).argmax()) == batched[0][0]


def test_inits_use_the_models_own_embeddings(tiny) -> None:
    model, tok = tiny.model, tiny.tokenizer
    g = torch.Generator().manual_seed(0)
    text = init_embeddings(model, tok, 'text:"hello world"', 5, g)
    ids = tok("hello world", add_special_tokens=False)["input_ids"]
    weight = model.get_input_embeddings().weight
    expected = torch.stack([weight[ids[i % len(ids)]] for i in range(5)])
    assert torch.equal(text, expected)
    # Lester et al.: the class labels' token embeddings come first, most frequent label first.
    yes = tok(" yes", add_special_tokens=False)["input_ids"]
    no = tok(" no", add_special_tokens=False)["input_ids"]
    assert len(yes) == 1 and len(no) == 1
    labels = init_embeddings(model, tok, "labels", 4, g, label_texts=[" no", " yes", " no"])
    assert torch.equal(labels[0], weight[no[0]]) and torch.equal(labels[1], weight[yes[0]])
    rnd = init_embeddings(model, tok, "random", 4, g)
    assert rnd.shape == (4, weight.shape[1]) and 0.2 < float(rnd.std() / weight.std()) < 5


def test_p_tuning_starts_at_its_init_and_learns_through_the_encoder() -> None:
    init = torch.randn(3, 8, dtype=torch.float64)
    for encoder in ("mlp", "lstm"):
        m = PTuning(init, encoder=encoder, hidden_size=6)
        assert torch.equal(m.serving(), init)
        F.mse_loss(m.serving(), torch.zeros_like(init)).backward()
        assert m.head[-1].weight.grad is not None and m.head[-1].weight.grad.abs().sum() > 0
