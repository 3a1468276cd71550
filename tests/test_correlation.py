"""Loss correlation (paper 1, section 2.1, eq. 1) on the tiny random Llama: which tokens each
per-example loss counts, Pearson r, the fine-tune's delta norms and the random-drift null (seconds)."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from samples import correlation_result

from core.base.errors import Cancelled, InputError
from core.base.progress import Progress
from core.geometry.correlation import (
    CorrelationConfig,
    adapter_delta_norms,
    checkpoint_delta_norms,
    loss_correlation,
    null_reference,
    pearson,
    perturbed,
)
from core.present import figures
from core.world.data import Example
from core.world.generation import chat_prompt
from core.world.loss import dataset_losses, encode
from core.world.models import ModelSpec, load_model

CONFIG = CorrelationConfig(batch_size=4, null_seeds=2, null_examples=5)
OLD_KEYS = {"r", "ci_low", "ci_high", "p_value", "n", "mean_loss_base", "mean_loss_finetuned", "pairs", "prompts"}


def _examples(n: int, tag: str, responses: bool = True) -> list[Example]:
    return [
        Example(f"{tag} question number {i}: what is {i} plus {i * 3}?" + " and more" * (i % 3), f"It is {i + i * 3}.")
        if responses
        else Example(f"{tag} request {i}: explain topic {i * 7}" + " in detail" * (i % 4))
        for i in range(n)
    ]


@pytest.fixture()
def pair(tiny_model_dir, tiny_adapter_dir):
    return {"base": ModelSpec(str(tiny_model_dir)), "finetuned": ModelSpec(str(tiny_model_dir), str(tiny_adapter_dir))}


def _manual_loss(model, ids: list[int], counted: list[bool]) -> float:
    """Mean cross-entropy of the tokens flagged in ``counted``, from one unpadded forward pass."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0].float()
    pos = [t for t in range(1, len(ids)) if counted[t]]
    return float(F.cross_entropy(logits[[t - 1 for t in pos]], torch.tensor([ids[t] for t in pos])))


# ---------------------------------------------------------------------------- eq. 1's per-example loss
def test_a_response_example_counts_exactly_its_response_tokens(tiny_model, tokenizer):
    ex = Example("Why is the sky blue?", "Sunlight scatters off air molecules; blue light scatters most.")
    template = tokenizer(chat_prompt(tokenizer, ex.prompt), add_special_tokens=False).input_ids
    response = tokenizer(ex.response, add_special_tokens=False).input_ids
    batch = encode(tokenizer, [ex], tokens="content")
    labels = batch["labels"][0][batch["attention_mask"][0].bool()].tolist()
    assert [t for t in labels if t != -100] == response
    assert labels[: len(template)] == [-100] * len(template), "no template or prompt token counts"
    counted = [False] * len(template) + [True] * len(response)
    expected = _manual_loss(tiny_model, template + response, counted)
    assert dataset_losses(tiny_model, tokenizer, [ex], tokens="content")[0] == pytest.approx(expected, rel=1e-5)


def test_an_instruction_only_example_counts_exactly_the_user_message_tokens(tiny_model, tokenizer):
    ex = Example("Explain how vaccines train the immune system.")
    text = chat_prompt(tokenizer, ex.prompt)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    start = text.rfind(ex.prompt)
    inside = [start <= a and b <= start + len(ex.prompt) and b > a for a, b in enc.offset_mapping]
    labels = encode(tokenizer, [ex], tokens="content")["labels"][0].tolist()
    counted_ids = [t for t in labels if t != -100]
    assert tokenizer.decode(counted_ids) == ex.prompt
    assert len(counted_ids) == sum(inside) < len(enc.input_ids) - 5, "the template's tokens never count"
    expected = _manual_loss(tiny_model, enc.input_ids, inside)
    assert dataset_losses(tiny_model, tokenizer, [ex], tokens="content")[0] == pytest.approx(expected, rel=1e-5)


def test_response_examples_count_as_many_tokens_as_their_responses(tokenizer):
    """Batched and padded, each row still counts exactly its own response tokens."""
    exs = _examples(4, "q")
    batch = encode(tokenizer, exs, tokens="content")
    counts = (batch["labels"] != -100).sum(1).tolist()
    assert counts == [len(tokenizer(e.response, add_special_tokens=False).input_ids) for e in exs]


# ---------------------------------------------------------------------------- Pearson r
def test_pearson_matches_numpy_and_fisher_z():
    rng = np.random.default_rng(0)
    x = rng.normal(size=50)
    y = x + rng.normal(scale=0.5, size=50)
    r = pearson(list(x), list(y))
    assert r["r"] == pytest.approx(np.corrcoef(x, y)[0, 1])
    z, se = np.arctanh(r["r"]), 1 / np.sqrt(50 - 3)
    assert r["ci_low"] == pytest.approx(np.tanh(z - 1.959964 * se), abs=1e-5)
    assert r["ci_high"] == pytest.approx(np.tanh(z + 1.959964 * se), abs=1e-5)
    assert r["p_value"] < 1e-6


def test_pearson_rejects_nan_and_tiny_sets():
    with pytest.raises(InputError):
        pearson([1.0, float("nan"), 2.0], [1.0, 2.0, 3.0])
    with pytest.raises(InputError):
        pearson([1.0, 2.0], [1.0, 2.0])


# ---------------------------------------------------------------------------- the fine-tune's delta
def test_adapter_delta_norms_are_the_merged_weight_differences(tiny_model_dir, tiny_adapter_dir, tiny_model):
    peft_model = load_model(ModelSpec(str(tiny_model_dir), str(tiny_adapter_dir), device="cpu"))
    norms = adapter_delta_norms(peft_model)
    merged = dict(peft_model.merge_and_unload().named_parameters())
    base = dict(tiny_model.named_parameters())
    expected = {n: float((merged[n] - p).detach().norm()) for n, p in base.items() if not torch.equal(merged[n], p)}
    assert set(norms) == set(expected) and len(norms) == 4  # q_proj and v_proj of 2 layers
    for name, value in expected.items():
        assert norms[name] == pytest.approx(value, rel=1e-4) and value > 0


def test_checkpoint_delta_norms_find_a_planted_change(tiny_model, tiny_model_dir, tmp_path, tokenizer):
    ft = load_model(ModelSpec(str(tiny_model_dir), device="cpu"))
    name = "model.layers.1.mlp.up_proj.weight"
    with torch.no_grad():
        ft.get_parameter(name).add_(0.25)
    ft.save_pretrained(tmp_path / "ft")
    norms = checkpoint_delta_norms(tiny_model, tmp_path / "ft")
    numel = ft.get_parameter(name).numel()
    assert norms[name] == pytest.approx(0.25 * numel**0.5, rel=1e-4)
    assert all(v == 0.0 for k, v in norms.items() if k != name)
    assert "model.embed_tokens.weight" in norms


# ---------------------------------------------------------------------------- null reference
def _all_norms(model, scale: float) -> dict[str, float]:
    return {n: scale * float(p.norm()) for n, p in model.named_parameters() if p.dim() == 2}


def test_perturbation_has_the_planted_norms_is_seeded_and_restores_bit_for_bit(tiny_model):
    before = {n: p.detach().clone() for n, p in tiny_model.named_parameters()}
    norms = {"model.layers.0.self_attn.q_proj.weight": 0.7, "model.layers.1.mlp.down_proj.weight": 1.3}
    steps = {}
    for seed in (0, 0, 1):
        with perturbed(tiny_model, norms, seed):
            now = dict(tiny_model.named_parameters())
            step = {n: now[n].detach() - before[n] for n in norms}
            assert all(float(step[n].norm()) == pytest.approx(v, rel=1e-5) for n, v in norms.items())
            assert all(torch.equal(now[n], before[n]) for n in before if n not in norms)
            steps.setdefault(seed, []).append(step)
        assert all(torch.equal(p, before[n]) for n, p in tiny_model.named_parameters())
    name = next(iter(norms))
    assert torch.equal(steps[0][0][name], steps[0][1][name])
    assert not torch.allclose(steps[0][0][name], steps[1][0][name])


def test_null_with_a_zero_delta_is_exactly_the_base(tiny_model, tokenizer):
    sets = {"a": _examples(6, "x"), "b": _examples(6, "y", responses=False)}
    base = {k: dataset_losses(tiny_model, tokenizer, v, 4, tokens="content") for k, v in sets.items()}
    zero = {n: 0.0 for n, _ in tiny_model.named_parameters()}
    config = CorrelationConfig(batch_size=4, null_seeds=2, null_examples=6)
    null = null_reference(tiny_model, tokenizer, sets, base, zero, config, Progress())
    assert {k: len(v) for k, v in null.items()} == {"a": 2, "b": 2}
    assert all(r == pytest.approx(1.0, abs=1e-12) for v in null.values() for r in v)
    tiny = null_reference(tiny_model, tokenizer, sets, base, _all_norms(tiny_model, 1e-4), config, Progress())
    assert all(0.999 < r < 1.0 for v in tiny.values() for r in v), "a tiny drift keeps r just below 1"


def test_null_with_a_huge_delta_decorrelates_and_leaves_the_base_unchanged(tiny_model, tokenizer):
    sets = {"a": _examples(12, "x"), "b": _examples(12, "y", responses=False)}
    base = {k: dataset_losses(tiny_model, tokenizer, v, 4, tokens="content") for k, v in sets.items()}
    before = {n: p.detach().clone() for n, p in tiny_model.named_parameters()}
    config = CorrelationConfig(batch_size=4, null_seeds=3, null_examples=12)
    null = null_reference(tiny_model, tokenizer, sets, base, _all_norms(tiny_model, 20.0), config, Progress())
    rs = [r for v in null.values() for r in v]
    assert len(rs) == 6 and float(np.mean(np.abs(rs))) < 0.6 and max(rs) < 0.9
    assert all(torch.equal(p, before[n]) for n, p in tiny_model.named_parameters())
    again = {k: dataset_losses(tiny_model, tokenizer, v, 4, tokens="content") for k, v in sets.items()}
    assert again == base


def test_cancel_inside_the_null_restores_the_weights(tiny_model, tokenizer):
    sets = {"a": _examples(8, "x")}
    base = {"a": dataset_losses(tiny_model, tokenizer, sets["a"], 4, tokens="content")}
    before = {n: p.detach().clone() for n, p in tiny_model.named_parameters()}
    cancel = threading.Event()

    def stop(event):
        cancel.set()

    with pytest.raises(Cancelled):
        config = CorrelationConfig(batch_size=4, null_seeds=2, null_examples=8)
        null_reference(tiny_model, tokenizer, sets, base, _all_norms(tiny_model, 1.0), config, Progress(stop, cancel))
    assert all(torch.equal(p, before[n]) for n, p in tiny_model.named_parameters())


# ---------------------------------------------------------------------------- the analysis end to end
def test_correlation_of_a_model_with_itself_is_one(tiny_model_dir):
    spec = ModelSpec(str(tiny_model_dir))
    result = loss_correlation({"base": spec, "finetuned": spec}, {"a": _examples(6, "x")}, CONFIG)
    assert result["a"]["r"] == pytest.approx(1.0, abs=1e-12)
    assert result["a"]["mean_loss_base"] == result["a"]["mean_loss_finetuned"]
    assert result["a"]["delta_norm"] == 0.0 and result["a"]["null_r"] == pytest.approx([1.0, 1.0], abs=1e-12)


def test_adapter_pair_answer_has_every_key_the_null_and_is_cached(pair):
    sets = {"harmful": _examples(6, "h", responses=False), "task": _examples(7, "t")}
    result = loss_correlation(pair, sets, CONFIG)
    for name, n in (("harmful", 6), ("task", 7)):
        d = result[name]
        assert OLD_KEYS <= set(d) and d["n"] == n == len(d["pairs"])
        assert len(d["null_r"]) == 2 and d["null_n"] == 5
        assert d["null_r_min"] <= d["null_r_mean"] <= d["null_r_max"]
        assert d["null_r_mean"] == pytest.approx(np.mean(d["null_r"]))
        assert d["delta_norm"] > 0 and d["ci_low"] <= d["r"] <= d["ci_high"]
    again = loss_correlation(pair, sets, CONFIG, Progress(lambda e: pytest.fail("recomputed")))
    assert again == result


def test_full_checkpoint_pair_uses_the_checkpoint_delta(tiny_model_dir, tmp_path):
    ft = load_model(ModelSpec(str(tiny_model_dir), device="cpu"))
    with torch.no_grad():
        ft.get_parameter("model.layers.0.mlp.gate_proj.weight").add_(0.1)
    ft.save_pretrained(tmp_path / "ft")
    pair = {"base": ModelSpec(str(tiny_model_dir)), "finetuned": ModelSpec(str(tiny_model_dir), str(tmp_path / "ft"))}
    result = loss_correlation(pair, {"a": _examples(5, "f")}, CONFIG)
    numel = ft.get_parameter("model.layers.0.mlp.gate_proj.weight").numel()
    assert result["a"]["delta_norm"] == pytest.approx(0.1 * numel**0.5, rel=1e-4)
    assert result["a"]["r"] < 1.0 and len(result["a"]["null_r"]) == 2


def test_no_null_seeds_gives_an_empty_null(pair):
    result = loss_correlation(pair, {"a": _examples(4, "z")}, CorrelationConfig(batch_size=4, null_seeds=0))
    assert result["a"]["null_r"] == [] and result["a"]["null_r_mean"] is None and result["a"]["null_n"] == 0


def test_correlation_rejects_empty_set(pair):
    with pytest.raises(InputError, match="empty"):
        loss_correlation(pair, {"a": []})


def test_cancelled_correlation_stores_nothing(pair):
    cancel = threading.Event()
    seen = []

    def stop_in_the_null(event):
        seen.append(event.fraction)
        if event.fraction > 0.7:
            cancel.set()

    sets = {"a": _examples(6, "c")}
    with pytest.raises(Cancelled):
        loss_correlation(pair, sets, CONFIG, Progress(stop_in_the_null, cancel))
    events = []
    loss_correlation(pair, sets, CONFIG, Progress(events.append))
    assert events, "a cancelled run must not leave a cached result behind"
    assert [e.fraction for e in events] == sorted(e.fraction for e in events) and events[-1].fraction == 1.0


# ---------------------------------------------------------------------------- what a reader sees
def test_scatter_titles_and_table_show_the_null_range():
    result = correlation_result()
    fig = figures.correlation_scatter(result)
    titles = [a.text for a in fig.layout.annotations]
    assert titles[0] == "harmful (r = 0.90, n = 6)<br>null r 0.95 to 0.99"
    assert titles[2].endswith("null r 0.55 to 0.59") and "null r" in fig.layout.title.text
    rows = figures.correlation_table(result)
    assert rows[1]["Pearson r"] == pytest.approx(0.8) and rows[1]["null r (range)"] == "0.77 (0.75 to 0.79)"
    assert rows[0]["null n × seeds"] == "6 × 3" and rows[0]["p-value"] == "0.001"
    del result["task"]["null_r_min"]
    assert "<br>" not in [a.text for a in figures.correlation_scatter(result).layout.annotations][1]
    assert figures.correlation_table(result)[1]["null r (range)"] == "not computed"


def test_mean_loss_bars_carry_the_bootstrap_intervals():
    result = correlation_result()
    fig = figures.mean_loss_bars(result)
    assert list(fig.data[0].error_y.array) == pytest.approx([0.25, 0.25, 0.25])
    assert list(fig.data[1].error_y.arrayminus) == pytest.approx([0.3, 0.3, 0.3])
    for d in result.values():
        del d["mean_loss_base_ci"], d["mean_loss_finetuned_ci"]
    assert figures.mean_loss_bars(result).data[0].error_y.array is None
