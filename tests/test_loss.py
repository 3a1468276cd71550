"""encode (labels, masking, EOS) and per_example_loss against a hand-written cross-entropy."""

from __future__ import annotations

import math

import torch

from core.world.data import Example
from core.world.generation import chat_prompt
from core.world.loss import encode, per_example_loss


def prompt_ids(tokenizer, prompt: str) -> list[int]:
    return tokenizer(chat_prompt(tokenizer, prompt), add_special_tokens=False).input_ids


def test_encode_masks_prompt_and_counts_response_plus_eos(tokenizer):
    ex = Example("What is 2+2?", "It is 4.")
    batch = encode(tokenizer, [ex])
    p = prompt_ids(tokenizer, ex.prompt)
    r = tokenizer("It is 4.", add_special_tokens=False).input_ids
    ids, labels, mask = batch["input_ids"][0].tolist(), batch["labels"][0].tolist(), batch["attention_mask"][0].tolist()
    assert ids == p + r + [tokenizer.eos_token_id]
    assert labels == [-100] * len(p) + r + [tokenizer.eos_token_id]
    assert mask == [1] * len(ids)
    assert sum(lab != -100 for lab in labels) == len(r) + 1


def test_encode_incomplete_response_has_no_eos(tokenizer):
    ex = Example("What is 2+2?", "It is 4.", complete=False)
    batch = encode(tokenizer, [ex])
    p = prompt_ids(tokenizer, ex.prompt)
    r = tokenizer("It is 4.", add_special_tokens=False).input_ids
    assert batch["input_ids"][0].tolist() == p + r
    assert batch["labels"][0].tolist() == [-100] * len(p) + r
    assert tokenizer.eos_token_id not in batch["labels"][0].tolist()


def test_encode_without_response_counts_all_tokens(tokenizer):
    ex = Example("Tell me a joke.")
    batch = encode(tokenizer, [ex])
    p = prompt_ids(tokenizer, ex.prompt)
    assert batch["input_ids"][0].tolist() == p
    assert batch["labels"][0].tolist() == p


def test_encode_tokens_all_counts_prompt_too(tokenizer):
    ex = Example("What is 2+2?", "It is 4.")
    batch = encode(tokenizer, [ex], tokens="all")
    assert batch["labels"][0].tolist() == batch["input_ids"][0].tolist()


def test_encode_right_pads_with_ignored_labels(tokenizer):
    short, long = (
        Example("Hi", "Yo"),
        Example("Please write a long and detailed answer about bread.", "Bread is made from flour and water."),
    )
    batch = encode(tokenizer, [short, long])
    n_short = len(encode(tokenizer, [short])["input_ids"][0])
    n_long = len(encode(tokenizer, [long])["input_ids"][0])
    assert batch["input_ids"].shape == (2, n_long) and n_short < n_long
    assert batch["attention_mask"][0].tolist() == [1] * n_short + [0] * (n_long - n_short)
    assert batch["labels"][0, n_short:].tolist() == [-100] * (n_long - n_short)
    assert batch["input_ids"][0, n_short:].tolist() == [tokenizer.pad_token_id] * (n_long - n_short)
    assert batch["attention_mask"][1].tolist() == [1] * n_long
    assert batch["input_ids"].dtype == batch["labels"].dtype == torch.long


def test_encode_truncates_to_max_length(tokenizer):
    ex = Example("Summarise this.", "word " * 200)
    batch = encode(tokenizer, [ex], max_length=40)
    assert batch["input_ids"].shape == (1, 40)
    full = encode(tokenizer, [ex], max_length=10_000)
    assert batch["input_ids"][0].tolist() == full["input_ids"][0, :40].tolist()
    assert batch["labels"][0].tolist() == full["labels"][0, :40].tolist()


def manual_loss(model, ids: list[int], labels: list[int]) -> float:
    """Mean next-token cross-entropy over counted labels, one unpadded sequence, by hand."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0].double()
    logp = torch.log_softmax(logits, dim=-1)
    terms = [-logp[t - 1, labels[t]].item() for t in range(1, len(ids)) if labels[t] != -100]
    return sum(terms) / len(terms)


def test_per_example_loss_matches_manual_cross_entropy(tiny_model, tokenizer):
    examples = [
        Example("What is the capital of France?", "Paris."),
        Example(
            "Write a haiku about autumn leaves falling slowly.", "Red leaves drift and fall,\nquietly onto the ground."
        ),
        Example("No response here, count the prompt."),
        Example("Cut short", "An answer that was cut", complete=False),
    ]
    batch = encode(tokenizer, examples)
    with torch.no_grad():
        losses = per_example_loss(tiny_model, batch)
    assert losses.shape == (4,)
    for i, ex in enumerate(examples):
        single = encode(tokenizer, [ex])
        expected = manual_loss(tiny_model, single["input_ids"][0].tolist(), single["labels"][0].tolist())
        assert math.isclose(losses[i].item(), expected, rel_tol=1e-4), (i, losses[i].item(), expected)
    # a random model over a ~49k vocabulary: loss near log(V)
    assert all(abs(loss - math.log(len(tokenizer))) < 2.0 for loss in losses.tolist())


def test_per_example_loss_is_differentiable(tiny_model, tokenizer):
    batch = encode(tokenizer, [Example("a", "b")])
    loss = per_example_loss(tiny_model, batch).mean()
    loss.backward()
    grads = [p.grad for p in tiny_model.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)
