"""Batched greedy generation: chat template, left padding, KV cache, length-sorted batches.

Prompts are sorted by token length so each batch pads little, generated with
``model.generate`` (greedy, cache on), and returned in the caller's order. A ``prefill``
string per prompt is appended after the assistant header (the prefilling attack, paper B.4).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable, Sequence

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from core.base.cache import memoize
from core.base.progress import Progress
from core.base.tensors import chunks
from core.world.data import Example


def chat_prompt(tokenizer: PreTrainedTokenizerBase, prompt: str, prefill: str = "") -> str:
    """The model's chat template around one user turn, ready for the assistant's reply."""
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
    )
    return text + prefill


@torch.no_grad()
def generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    max_new_tokens: int = 48,
    batch_size: int = 32,
    prefills: Sequence[str] | None = None,
    progress: Progress | None = None,
) -> list[str]:
    """Greedy completions (decoded, special tokens stripped) for each prompt, in input order."""
    progress = progress or Progress()
    prefills = prefills or [""] * len(prompts)
    texts = [chat_prompt(tokenizer, p, f) for p, f in zip(prompts, prefills)]
    lengths = [len(tokenizer(t, add_special_tokens=False).input_ids) for t in texts]
    order = sorted(range(len(texts)), key=lambda i: lengths[i])
    outputs: list[str] = [""] * len(texts)
    device = next(model.parameters()).device
    done = 0
    for batch in chunks(order, batch_size):
        enc = tokenizer([texts[i] for i in batch], return_tensors="pt", padding=True, add_special_tokens=False).to(
            device
        )
        out = model.generate(
            **enc,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            use_cache=True,
            pad_token_id=tokenizer.pad_token_id,
            temperature=None,
            top_p=None,
            top_k=None,
        )
        new = out[:, enc.input_ids.shape[1] :]
        for i, row in zip(batch, tokenizer.batch_decode(new, skip_special_tokens=True)):
            outputs[i] = row.strip()
        done += len(batch)
        progress.update(done / len(texts), f"generating {done}/{len(texts)}")
    return outputs


def own_answers(
    load: Callable[[], tuple[PreTrainedModel, PreTrainedTokenizerBase]],
    prompts: list[Example],
    max_new_tokens: int,
    memo: tuple[str, dict],
    progress: Progress,
    completeness: PreTrainedTokenizerBase | None = None,
) -> list[Example]:
    """``prompts`` with a model's own greedy answers as responses, memoised under ``memo``
    (namespace, key); ``load`` is called only on a miss. With a ``completeness`` tokenizer an
    answer that stopped before the token limit is marked complete (it gets an end-of-turn token
    in training); otherwise every answer is a truncated prefix (``complete=False``)."""
    namespace, key = memo
    texts = memoize(
        namespace, key, lambda: generate(*load(), [p.prompt for p in prompts], max_new_tokens, 32, progress=progress)
    )

    def complete(answer: str) -> bool:
        return (
            completeness is not None
            and len(completeness(answer, add_special_tokens=False).input_ids) < max_new_tokens - 1
        )

    return [replace(p, response=a, complete=complete(a)) for p, a in zip(prompts, texts)]
