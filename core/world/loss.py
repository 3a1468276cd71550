"""The one seam between models and data: tokenised (prompt, response) batches and per-example
cross-entropy.

Which tokens a per-example loss counts (``tokens``):

* ``"content"`` (the measurement rule, first paper's eq. 1 read per set): the response tokens
  when an example has a response, else the user message's own tokens; the chat template's fixed
  tokens (system prompt, role headers, end-of-turn) never count. Without this, the ~25 template
  tokens every SmolLM2 example shares make each loss track prompt length in both models.
* ``"auto"`` (training and restoration): the response tokens plus the end-of-turn token of a
  complete response, else the whole chat-formatted text.
* ``"all"``: every token after the first.

Every analysis and training loop goes through here.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from core.base.scaleout import map_shards
from core.base.tensors import chunks
from core.world.data import Example
from core.world.generation import chat_prompt

TOKEN_RULES = ("content", "auto", "all")


def encode(
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[Example],
    max_length: int = 256,
    tokens: str = "auto",
) -> dict[str, torch.Tensor]:
    """Right-padded input_ids, attention_mask and labels (-100 where the loss does not count)."""
    if tokens not in TOKEN_RULES:
        raise ValueError(f"tokens must be one of {TOKEN_RULES}, got {tokens!r}")
    rows, labels = [], []
    for ex in examples:
        text = chat_prompt(tokenizer, ex.prompt)
        prompt_ids = tokenizer(text, add_special_tokens=False).input_ids
        if ex.response is None:
            ids = prompt_ids
            lab = _user_content_labels(tokenizer, text, ex.prompt) if tokens == "content" else list(ids)
        elif tokens == "content":
            resp_ids = tokenizer(ex.response, add_special_tokens=False).input_ids
            ids = prompt_ids + resp_ids
            lab = [-100] * len(prompt_ids) + resp_ids
        else:
            resp = ex.response + (tokenizer.eos_token if ex.complete else "")
            resp_ids = tokenizer(resp, add_special_tokens=False).input_ids
            ids = prompt_ids + resp_ids
            lab = list(ids) if tokens == "all" else [-100] * len(prompt_ids) + resp_ids
        rows.append(ids[:max_length])
        labels.append(lab[:max_length])
    width = max(len(r) for r in rows)
    pad = tokenizer.pad_token_id
    input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    label_t = torch.full((len(rows), width), -100, dtype=torch.long)
    for i, (r, lab) in enumerate(zip(rows, labels)):
        input_ids[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = 1
        label_t[i, : len(lab)] = torch.tensor(lab)
    return {"input_ids": input_ids, "attention_mask": mask, "labels": label_t}


def _user_content_labels(tokenizer: PreTrainedTokenizerBase, text: str, content: str) -> list[int]:
    """Labels of the chat-formatted ``text`` counting only tokens inside the user message
    ``content`` (character offsets of a fast tokenizer); template tokens get -100."""
    start = text.rfind(content)
    end = start + len(content)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    return [t if start <= a and b <= end and b > a else -100 for t, (a, b) in zip(enc.input_ids, enc.offset_mapping)]


def per_example_loss(model: PreTrainedModel, batch: dict[str, torch.Tensor], reduction: str = "mean") -> torch.Tensor:
    """Mean token cross-entropy per example over its counted (label != -100) tokens, or with
    ``reduction="sum"`` their sum (the sequence's negative log-likelihood).

    Logits are computed only where a token counts (a boolean ``logits_to_keep`` mask): prompt
    and padding positions cost no vocabulary projection, which matters most for double backward.
    No key/value cache is built (``use_cache=False``): a loss never decodes further, and building
    it cost ~1.7% of a demo forward (``bench/peers.py``).
    """
    device = next(model.parameters()).device
    batch = {k: v.to(device) for k, v in batch.items()}
    counted = torch.zeros_like(batch["labels"], dtype=torch.bool)
    counted[:, :-1] = batch["labels"][:, 1:] != -100
    logits = model(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], logits_to_keep=counted, use_cache=False
    ).logits
    targets = batch["labels"][:, 1:][counted[:, :-1]]
    tok = F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), targets, reduction="none")
    rows = counted.nonzero()[:, 0]
    total = torch.zeros(counted.shape[0], device=device, dtype=tok.dtype).index_add(0, rows, tok)
    return total if reduction == "sum" else total / counted.sum(1).clamp(min=1)


def encode_batches(
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[Example],
    batch_size: int,
    max_length: int = 256,
    tokens: str = "auto",
) -> list[dict[str, torch.Tensor]]:
    """Length-sorted encoded batches, for losses that are summed or averaged (order-free)."""
    ex = sorted(examples, key=lambda e: len(e.prompt) + len(e.response or ""))
    return [encode(tokenizer, batch, max_length, tokens) for batch in chunks(ex, batch_size)]


@torch.no_grad()
def dataset_losses(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[Example],
    batch_size: int = 8,
    max_length: int = 256,
    tokens: str = "auto",
    progress=None,
    load: Callable | None = None,
) -> list[float]:
    """Per-example losses over a dataset, in input order; batched by length to pad little. With
    ``load`` (a callable that loads this model and its tokenizer) and a scale-out session, the batches go to Ray workers
    (``core.base.scaleout``): the same batches, so the same losses."""
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].prompt) + len(examples[i].response or ""))
    batches = [order[start : start + batch_size] for start in range(0, len(order), batch_size)]
    out: list[float] = [0.0] * len(examples)
    done = [0]

    def report(k: int, losses: list[float]) -> tuple[str, None]:
        for i, loss in zip(batches[k], losses):
            out[i] = loss
        done[0] += len(batches[k])
        return f"losses {done[0]}/{len(examples)}", None

    shared = (list(examples), max_length, tokens)
    map_shards(_batch_losses, batches, shared, (model, tokenizer), load, progress, report)
    return out


def _batch_losses(replica: tuple, shared: tuple, idx: list[int]) -> list[float]:
    model, tokenizer = replica
    examples, max_length, tokens = shared
    with torch.no_grad():
        return per_example_loss(model, encode(tokenizer, [examples[i] for i in idx], max_length, tokens)).tolist()
