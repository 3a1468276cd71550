"""General capability (``core.world.capability``): the planted scorer gives back exactly the planted
accuracy, acc_norm divides by the choice's length, log-likelihoods equal the token log-probabilities
written out (padded batches included), Winogrande's partial scoring splits at the blank, and every
shipped task file reads into well-formed items."""

from __future__ import annotations

import uuid

import pytest
import torch

from core.base.errors import InputError
from core.base.stats import rate_with_interval
from core.world import capability as cap
from core.world.capability import (
    TASKS,
    CapabilityConfig,
    Item,
    encode_pair,
    load_items,
    mean_with_interval,
    sample_items,
    score_items,
    token_loglikelihoods,
    winogrande_requests,
)

SPLIT_SIZES = {
    "arc_easy": 570,
    "arc_challenge": 299,
    "boolq": 3270,
    "piqa": 1838,
    "hellaswag": 10042,
    "winogrande": 1267,
}


def _fp() -> str:
    return "test-" + uuid.uuid4().hex  # a fresh model fingerprint: nothing memoised applies


# ------------------------------------------------------------------------------- planted scorer
def _planted(items: list[Item], right: set[int]):
    """A ``loglikelihoods`` stand-in: for item i the gold choice is the most likely iff i in ``right``,
    else the next choice is. It checks it is asked for the items' requests in item order."""
    expected = [r for it in items for r in it.requests]

    def fake(model, tokenizer, requests, batch_size=16, progress=None):
        assert list(requests) == expected
        out = []
        for i, it in enumerate(items):
            best = it.gold if i in right else (it.gold + 1) % len(it.requests)
            out += [0.0 if j == best else -50.0 for j in range(len(it.requests))]
        return out

    return fake


@pytest.mark.parametrize("task", list(TASKS))
def test_planted_scorer_gives_the_planted_accuracy(task, tiny_model, monkeypatch):
    n = 12
    items = sample_items(task, n)
    right = {0, 3, 4, 7, 11}
    monkeypatch.setattr(cap, "loglikelihoods", _planted(items, right))
    result = cap.capability(tiny_model, None, _fp(), CapabilityConfig(tasks=(task,), items=n))
    entry = result["tasks"][task]
    flags = [i in right for i in range(n)]
    assert entry["correct"] == flags
    assert entry["acc"] == rate_with_interval(flags)
    assert entry["acc"]["rate"] == pytest.approx(100 * len(right) / n)
    assert entry["n"] == n and entry["acc"]["n"] == n
    assert entry["acc"]["ci_low"] < entry["acc"]["rate"] < entry["acc"]["ci_high"]
    assert ("acc_norm" in entry) == TASKS[task].norm == ("correct_norm" in entry)
    if TASKS[task].norm:  # one choice at 0 and the rest at -50: dividing by a length keeps the order
        assert entry["correct_norm"] == flags
    assert result["mean_acc"]["rate"] == pytest.approx(100 * len(right) / n)


def test_planted_accuracy_over_several_tasks_and_its_mean(tiny_model, monkeypatch):
    n, chosen = 10, {"arc_easy": {1, 2}, "winogrande": set(range(9))}
    items = {t: sample_items(t, n) for t in chosen}
    fakes = {t: _planted(items[t], chosen[t]) for t in chosen}
    flat = {tuple(r for it in items[t] for r in it.requests): t for t in chosen}

    def fake(model, tokenizer, requests, batch_size=16, progress=None):
        return fakes[flat[tuple(requests)]](model, tokenizer, requests)

    monkeypatch.setattr(cap, "loglikelihoods", fake)
    result = cap.capability(tiny_model, None, _fp(), CapabilityConfig(tasks=tuple(chosen), items=n))
    assert result["tasks"]["arc_easy"]["acc"]["rate"] == pytest.approx(20.0)
    assert result["tasks"]["winogrande"]["acc"]["rate"] == pytest.approx(90.0)
    mean = result["mean_acc"]
    assert mean["rate"] == pytest.approx(55.0) and mean["n"] == 20 and mean["tasks"] == 2
    assert mean["ci_low"] < 55.0 < mean["ci_high"]
    summary = cap.summary(result)
    assert set(summary["tasks"]["arc_easy"]) == {"acc", "acc_norm", "n"}  # no per-item lists
    assert set(summary["tasks"]["winogrande"]) == {"acc", "n"}


def test_results_are_memoised_per_model_and_items(tiny_model, monkeypatch):
    calls = []

    def fake(model, tokenizer, requests, batch_size=16, progress=None):
        calls.append(len(requests))
        return [0.0] * len(requests)

    monkeypatch.setattr(cap, "loglikelihoods", fake)
    fp, config = _fp(), CapabilityConfig(tasks=("piqa",), items=4)
    first = cap.capability(tiny_model, None, fp, config)
    again = cap.capability(tiny_model, None, fp, CapabilityConfig(tasks=("piqa",), items=4, batch_size=3))
    assert calls == [8] and again["tasks"] == first["tasks"]  # batch size is not part of the key
    cap.capability(tiny_model, None, _fp(), config)
    cap.capability(tiny_model, None, fp, CapabilityConfig(tasks=("piqa",), items=5))
    assert calls == [8, 8, 10]


# ------------------------------------------------------------------------------------ acc_norm
def test_acc_norm_divides_by_the_choice_length_in_characters():
    short, long = "no", "a much longer correct answer"
    item = Item("x", (("Q", f" {short}"), ("Q", f" {long}")), 1, (short, long))
    # the long answer loses on the sum (-8 < -3) but wins per character (-8/28 > -3/2)
    correct, correct_norm = score_items([item], [-3.0, -8.0])
    assert correct == [False] and correct_norm == [True]
    # and the other way round: the short gold answer wins on the sum, loses per character
    item0 = Item("y", item.requests, 0, item.choices)
    assert score_items([item0], [-3.0, -4.0]) == ([True], [False])
    # the length is of the choice string without the leading space of its continuation
    tie = Item("z", (("Q", " ab"), ("Q", " abcd")), 1, ("ab", "abcd"))
    assert score_items([tie], [-2.0, -4.0 + 1e-9]) == ([False], [True])


def test_ties_go_to_the_first_choice_as_numpy_argmax():
    item = Item("t", (("Q", " a"), ("Q", " b")), 1, ("a", "b"))
    assert score_items([item], [-1.0, -1.0]) == ([False], [False])


# ---------------------------------------------------------------------------- log-likelihoods
def _direct(model, ctx: list[int], cont: list[int]) -> float:
    """log P(cont | ctx) written out: one unpadded forward, the log-softmax at each position before a
    continuation token, summed."""
    ids = torch.tensor([ctx + cont])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0].double(), dim=-1)
    return sum(float(logp[len(ctx) + k - 1, tok]) for k, tok in enumerate(cont))


PAIRS_TEXT = [
    ("Question: What is the boiling point of water at sea level?\nAnswer:", " 100 degrees Celsius"),
    ("Question: What is the boiling point of water at sea level?\nAnswer:", " 50 degrees"),
    ("Hi", " there, friend of mine, how are you today?"),
    ("A much longer context that goes on and on about nothing in particular, then stops.", " Yes"),
    ("A much longer context that goes on and on about nothing in particular, then stops.", " No"),
    ("The cat sat on the", " mat"),
]


def test_loglikelihood_equals_the_token_log_probs_and_padding_changes_nothing(tiny_model, tokenizer):
    pairs = [encode_pair(tokenizer, c, t) for c, t in PAIRS_TEXT]
    assert len({len(c) + len(t) for c, t in pairs}) > 3  # lengths differ: the batch is padded
    direct = [_direct(tiny_model, c, t) for c, t in pairs]
    assert all(abs(d) > 1.0 for d in direct)  # non-trivial numbers
    batched = token_loglikelihoods(tiny_model, pairs, batch_size=len(pairs))
    singles = [token_loglikelihoods(tiny_model, [p], batch_size=1)[0] for p in pairs]
    assert batched == pytest.approx(direct, abs=1e-5)
    assert singles == pytest.approx(direct, abs=1e-5)
    assert token_loglikelihoods(tiny_model, pairs, batch_size=2) == pytest.approx(direct, abs=1e-5)
    assert cap.loglikelihoods(tiny_model, tokenizer, PAIRS_TEXT, batch_size=4) == pytest.approx(direct, abs=1e-5)


def test_head_path_and_full_forward_agree(tiny_model, tokenizer, monkeypatch):
    assert cap._head_path(tiny_model) is not None  # logits only at continuation positions for Llama
    pairs = [encode_pair(tokenizer, c, t) for c, t in PAIRS_TEXT]
    fast = token_loglikelihoods(tiny_model, pairs, batch_size=3)
    monkeypatch.setattr(cap, "_head_path", lambda model: None)
    full = token_loglikelihoods(tiny_model, pairs, batch_size=3)
    assert fast == pytest.approx(full, abs=1e-5)


def test_loglikelihood_of_a_lora_model_includes_the_adapter(tiny_model_dir, tiny_adapter_dir, tokenizer):
    from core.world.models import ModelSpec, load_model

    plain = load_model(ModelSpec(str(tiny_model_dir), device="cpu"))
    lora = load_model(ModelSpec(str(tiny_model_dir), str(tiny_adapter_dir), device="cpu"))
    pairs = [encode_pair(tokenizer, c, t) for c, t in PAIRS_TEXT]
    got = token_loglikelihoods(lora, pairs, batch_size=4)
    assert got == pytest.approx([_direct(lora, c, t) for c, t in pairs], abs=1e-5)
    assert got != pytest.approx(token_loglikelihoods(plain, pairs, batch_size=4), abs=1e-3)


def test_shared_inputs_are_scored_once_with_each_target(tiny_model, monkeypatch):
    ctx = [100, 200, 300, 400]
    pairs = [(ctx, [5]), (ctx, [6]), (ctx, [5, 7])]
    widths = []
    real = cap._forward

    def counting(model, path, inputs, reads):
        widths.append(len(inputs))
        return real(model, path, inputs, reads)

    monkeypatch.setattr(cap, "_forward", counting)
    got = token_loglikelihoods(tiny_model, pairs, batch_size=8)
    assert widths == [2]  # ctx (both one-token continuations) and ctx + [5]
    assert got == pytest.approx([_direct(tiny_model, c, t) for c, t in pairs], abs=1e-5)


def test_model_mode_is_restored(tiny_model):
    tiny_model.train()
    token_loglikelihoods(tiny_model, [([1, 2, 3], [4])])
    assert tiny_model.training


def test_encode_pair_follows_lm_eval(tokenizer):
    ctx, cont = encode_pair(tokenizer, "Answer: ", "yes")  # trailing space moves to the continuation
    assert (ctx, cont) == encode_pair(tokenizer, "Answer:", " yes")
    whole = tokenizer("Answer: yes", add_special_tokens=False).input_ids
    assert ctx + cont == whole and ctx == tokenizer("Answer:", add_special_tokens=False).input_ids
    assert tokenizer.bos_token_id not in ctx  # no special tokens


# ---------------------------------------------------------------------------------- Winogrande
def test_winogrande_partial_scoring_splits_at_the_blank():
    sentence = "The trophy doesn't fit into the suitcase because _ is too large."
    requests = winogrande_requests(sentence, ("the trophy", "the suitcase"))
    assert requests == (
        ("The trophy doesn't fit into the suitcase because the trophy", " is too large."),
        ("The trophy doesn't fit into the suitcase because the suitcase", " is too large."),
    )


def test_winogrande_items_score_the_shared_continuation_under_each_option():
    for item in load_items("winogrande")[:200]:
        (c1, t1), (c2, t2) = item.requests
        assert t1 == t2 and t1.startswith(" ")
        o1, o2 = item.choices
        assert c1.endswith(o1) and c2.endswith(o2) and c1[: -len(o1)] == c2[: -len(o2)]
        assert "_" not in c1[: -len(o1)] and "_" not in t1


def test_winogrande_gold_is_the_context_whose_continuation_is_likelier():
    item = load_items("winogrande")[0]  # "... than Maria so _ always got the easier cases.", answer 2
    assert item.gold == 1 and item.requests[1][0].endswith("Maria")
    assert score_items([item], [-9.0, -4.0]) == ([True], [True])


# ------------------------------------------------------------------------------ the task files
@pytest.mark.parametrize("task", list(TASKS))
def test_each_task_file_reads_into_well_formed_items(task):
    items = load_items(task)
    assert len(items) == SPLIT_SIZES[task]
    assert len({it.uid for it in items}) == len(items)
    golds = set()
    for it in items:
        assert 2 <= len(it.requests) == len(it.choices) <= 5
        assert 0 <= it.gold < len(it.requests)
        golds.add(it.gold)
        for context, continuation in it.requests:
            assert context.strip() and context == context.rstrip()
            assert continuation.startswith(" ") and continuation.strip()
        assert all(choice.strip() for choice in it.choices)
        if task != "winogrande":  # one context, each choice its own continuation
            assert len({c for c, _ in it.requests}) == 1
            assert [t for _, t in it.requests] == [f" {c}" for c in it.choices]
    assert golds >= set(range(len(items[0].requests)))  # every answer position occurs


def test_prompt_formats_are_lm_evals():
    arc = load_items("arc_easy")[0]
    assert arc.requests[0] == (
        "Question: Which technology was developed most recently?\nAnswer:",
        " cellular telephone",
    )
    assert arc.gold == 0
    boolq = load_items("boolq")[0]
    assert boolq.requests[0][0].endswith("\nQuestion: does ethanol take more energy make that produces?\nAnswer:")
    assert [t for _, t in boolq.requests] == [" no", " yes"] and boolq.gold == 0
    piqa = load_items("piqa")[0]
    assert piqa.requests[0][0] == "Question: How do I ready a guinea pig cage for it's new occupants?\nAnswer:"
    hs = load_items("hellaswag")[0]
    assert hs.requests[0] == (
        "Roof shingle removal: A man is sitting on a roof. He",
        " is using wrap to wrap a pair of skis.",
    )
    assert hs.gold == 3
    assert not any("[" in c or "  " in c for it in load_items("hellaswag") for c, _ in it.requests[:1])


def test_hellaswag_preprocess():
    assert cap.hellaswag_preprocess(" Clean [title] Wash  it [step] well. ") == "Clean. Wash it well."


def test_samples_are_seeded_distinct_and_in_file_order():
    a, b = sample_items("hellaswag", 50), sample_items("hellaswag", 50)
    assert a == b and len({it.uid for it in a}) == 50
    order = {it.uid: i for i, it in enumerate(load_items("hellaswag"))}
    assert [order[it.uid] for it in a] == sorted(order[it.uid] for it in a)
    assert sample_items("arc_challenge", 0) == list(load_items("arc_challenge"))
    assert sample_items("arc_challenge", 10_000) == list(load_items("arc_challenge"))
    assert sample_items("piqa", 50) != sample_items("piqa", 50, seed=1)


def test_bad_config_is_an_input_error(tiny_model):
    with pytest.raises(InputError):
        cap.capability(tiny_model, None, _fp(), CapabilityConfig(tasks=("arc_easy", "mmlu")))
    with pytest.raises(InputError):
        cap.capability(tiny_model, None, _fp(), CapabilityConfig(items=-1))


def test_mean_interval_is_a_stratified_bootstrap():
    flags = [[True] * 30 + [False] * 70, [True] * 80 + [False] * 20]
    mean = mean_with_interval(flags)
    assert mean["rate"] == pytest.approx(55.0)
    # normal approximation of the same quantity: sd = 0.5 * sqrt(.3*.7/100 + .8*.2/100) = 3.04 points
    assert mean["ci_low"] == pytest.approx(55.0 - 1.96 * 3.04, abs=1.0)
    assert mean["ci_high"] == pytest.approx(55.0 + 1.96 * 3.04, abs=1.0)
    assert mean_with_interval([[True] * 5])["ci_low"] == 100.0


# ----------------------------------------------------------------------------------- command
def test_capability_command_end_to_end_on_the_tiny_model(tiny_model_dir):
    from core.service.commands import execute

    argv = ["capability", "--base", str(tiny_model_dir), "--device", "cpu"]
    out = execute([*argv, "--tasks", "winogrande,piqa", "--items", "3"], callback=None, cached_answers=False)
    assert set(out["base"]["tasks"]) == {"winogrande", "piqa"}
    piqa = out["base"]["tasks"]["piqa"]
    assert piqa["n"] == 3 and set(piqa) == {"acc", "acc_norm", "n"}
    assert piqa["acc"]["ci_low"] <= piqa["acc"]["rate"] <= piqa["acc"]["ci_high"]
    assert out["config"] == {"tasks": ["winogrande", "piqa"], "items": 3}
    with pytest.raises(InputError):
        execute([*argv, "--tasks", "mmlu"], callback=None, cached_answers=False)
