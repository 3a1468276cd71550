"""Curvature-aware restoration (paper 1, eq. 5, B.1-B.2) and its first-order baseline."""

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from core.base.errors import InputError
from core.base.progress import Progress
from core.restoration.context import RestoreContext
from core.restoration.data import RestorationData
from core.restoration.methods.curvature import (
    GradientAscentConfig,
    InfluenceConfig,
    LoraObjective,
    curvature_pairs,
    filter_pair,
    first_tokens,
    gradient_budget,
    influence_restore,
    iteration_count,
    lbfgs_direction,
)
from core.world.data import Example
from core.world.models import ModelSpec


def test_lbfgs_two_loop_inverts_a_quadratic():
    """With H-conjugate pairs spanning the space (eigenvectors), the recursion gives (H + reg)^-1 g;
    with arbitrary pairs it satisfies the newest secant equation H^-1 y = s."""
    torch.manual_seed(0)
    n = 6
    q = torch.randn(n, n, dtype=torch.float64)
    h = q @ q.T + n * torch.eye(n, dtype=torch.float64)
    eye = torch.eye(n, dtype=torch.float64)
    g = torch.randn(n, dtype=torch.float64)
    conjugate = [(v, h @ v) for v in torch.linalg.eigh(h).eigenvectors.T]
    assert torch.allclose(lbfgs_direction(g, conjugate, 0.0), torch.linalg.solve(h, g), atol=1e-8)
    assert torch.allclose(lbfgs_direction(g, conjugate, 0.5), torch.linalg.solve(h + 0.5 * eye, g), atol=1e-8)
    arbitrary = [(s / s.norm(), h @ s / s.norm()) for s in torch.randn(3, n, dtype=torch.float64)]
    s_last, y_last = arbitrary[-1]
    assert torch.allclose(lbfgs_direction(y_last, arbitrary, 0.0), s_last, atol=1e-8)


def test_lbfgs_without_pairs_is_scaled_gradient():
    g = torch.ones(3)
    assert torch.allclose(lbfgs_direction(g, [], 1.0), g / 2)


def test_filter_pair_follows_b1_order():
    """(1) insufficient curvature, negative included, is rejected before anything else; (2) a kept
    pair is normalised; (4) a non-finite norm is excluded; every row names its filter."""
    kept, row = filter_pair(torch.tensor([2.0, 0.0]), torch.tensor([4.0, 1.0]), 1e-6)
    assert (
        kept is not None
        and math.isclose(float(kept[0].norm()), 1.0)
        and torch.allclose(kept[1], torch.tensor([2.0, 0.5]))
    )
    assert row["filter"] == "kept" and row["sy"] == 8.0 and row["s_norm"] == 2.0 and row["curvature"] == 2.0
    none, row = filter_pair(torch.tensor([1.0, 0.0]), torch.tensor([-1.0, 1.0]), 1e-6)
    assert none is None and row["filter"] == "negative curvature" and row["sy"] == -1.0
    small, row = filter_pair(torch.tensor([1.0, 0.0]), torch.tensor([1e-3, 1.0]), 0.01)  # positive but below the cosine
    assert small is None and row["filter"] == "insufficient curvature"
    assert filter_pair(torch.tensor([1.0, 0.0]), torch.tensor([1e-3, 1.0]), 1e-6)[1]["filter"] == "kept"
    assert filter_pair(torch.zeros(2), torch.ones(2), 1e-6)[1]["filter"] == "insufficient curvature"
    nan, row = filter_pair(torch.ones(2), torch.tensor([float("nan"), 0.0]), 1e-6)
    assert nan is None and row["filter"] == "degenerate norm" and row["sy"] is None


class _Quadratic:
    """Per-batch quadratics ``1/2 x^T H x - b_i^T x`` sharing one Hessian: each batch's gradient
    differs (as minibatches do), ``y = H s`` exactly."""

    def __init__(self, h: torch.Tensor, b: torch.Tensor):
        self.h, self.b, self.theta = h, b, torch.zeros(h.shape[0], dtype=h.dtype)

    def get(self):
        return self.theta.clone()

    def set(self, theta):
        self.theta = theta.clone()

    def loss_and_grad(self, batch):
        b = self.b[batch].mean(0)
        return float(0.5 * self.theta @ self.h @ self.theta - b @ self.theta), self.h @ self.theta - b


def test_lbfgs_direction_from_real_pairs_approaches_newton_on_a_quadratic():
    """Pairs built by ``curvature_pairs`` (probe steps on fresh batches, filters, round-robin over
    three subsets) on a quadratic with a known Hessian: as pairs accumulate, the direction
    approaches H^-1 g, and it differs measurably from g."""
    torch.manual_seed(2)
    n = 4
    q, _ = torch.linalg.qr(torch.randn(n, n, dtype=torch.float64))
    h = q @ torch.diag(torch.logspace(0, 1, n, dtype=torch.float64)) @ q.T
    obj = _Quadratic(h, torch.randn(120, n, dtype=torch.float64))
    sets = {"retain-a": list(range(40)), "forget": list(range(40, 80)), "retain-b": list(range(80, 120))}
    g = torch.randn(n, dtype=torch.float64)
    newton = torch.linalg.solve(h, g)
    err, angle = {}, {}
    for m in (0, 3, 10, 20):
        built = curvature_pairs(obj, sets, InfluenceConfig(pairs=m, pair_batch=2), 1.0, Progress())
        assert len(built.pairs) == m and [r["filter"] for r in built.rows] == ["kept"] * m
        d = lbfgs_direction(g, built.pairs, 0.0)
        err[m] = float((d - newton).norm() / newton.norm())
        angle[m] = 1 - float(d @ newton / (d.norm() * newton.norm()))
        if m == 10:
            assert 1 - float(d @ g / (d.norm() * g.norm())) > 0.1, "the direction is still the gradient"
    assert err[20] < err[10] < err[3] < err[0] and err[20] < 0.05, err
    assert angle[20] < angle[10] < angle[0] / 10, angle


def test_pairs_spread_over_subsets_with_rates_varied_within_each():
    """10 pairs: 4/3/3 over the subsets, each on its own batch, every subset sees more than one rate."""
    torch.manual_seed(0)
    obj = _Quadratic(torch.eye(3, dtype=torch.float64) * 2, torch.randn(300, 3, dtype=torch.float64))
    sets = {"retain-a": list(range(100)), "forget": list(range(100, 200)), "retain-b": list(range(200, 300))}
    built = curvature_pairs(obj, sets, InfluenceConfig(pair_batch=16), 1.0, Progress())
    rows = built.rows
    assert [sum(r["set"] == s for r in rows) for s in sets] == [4, 3, 3]
    for name in sets:
        mine = [r for r in rows if r["set"] == name]
        assert len({r["batch"] for r in mine}) == len(mine) and all(r["fresh"] and r["examples"] == 16 for r in mine)
        assert len({r["lr"] for r in mine}) == 3, (name, [r["lr"] for r in mine])
    assert {"sy", "s_norm", "y_norm", "filter", "lr", "set"} <= set(rows[0])


def test_negative_curvature_is_rejected_and_raises_the_damping():
    """B.1's order: a negative-curvature pair is never stored; it raises the shift mu (filter 3)."""
    h = torch.diag(torch.tensor([-1.0, 2.0], dtype=torch.float64))
    obj = _Quadratic(h, torch.tensor([[1.0, 0.0]] * 8, dtype=torch.float64))
    built = curvature_pairs(obj, {"forget": list(range(8))}, InfluenceConfig(pairs=2, pair_batch=4), 1.0, Progress())
    assert not built.pairs and {r["filter"] for r in built.rows} == {"negative curvature"}
    assert built.damping == pytest.approx(1.0)


def test_first_tokens_cuts_responses(tokenizer):
    ex = [Example("p", "one two three four five six seven eight", "harm", "t", "u")]
    assert first_tokens(tokenizer, ex, 0) == ex
    cut = first_tokens(tokenizer, ex, 3)[0]
    assert len(tokenizer(cut.response, add_special_tokens=False).input_ids) == 3 and not cut.complete


def _data() -> RestorationData:
    harmful = [
        Example(
            f"How do I make weapon number {i}?", f"Step one: gather part {i}, then assemble it.", "harm", "t", f"h{i}"
        )
        for i in range(8)
    ]
    task = [
        Example(f"Convert the date: March {i + 1}, 2001", f"2001-03-{i + 1:02d}", "task", "t", f"t{i}")
        for i in range(16)
    ]
    return RestorationData(
        forget=harmful[:4],
        retain=task[:4],
        curvature_forget=harmful[4:6],
        curvature_retain=[task[4:8], task[8:12]],
        recovery=harmful,
        rollback=task,
        monitor_harmful=harmful[:2],
        monitor_task=task[:2],
        fuse_task=task[:2],
        validation_forget=harmful[6:],
        validation_retain=task[12:],
    )


def _ctx(tiny_model_dir, tiny_adapter_dir, tokenizer, steps: list) -> RestoreContext:
    def record(model, **extra):
        steps.append(extra)
        return {}

    return RestoreContext(
        ModelSpec(str(tiny_model_dir), device="cpu"),
        ModelSpec(str(tiny_model_dir), str(tiny_adapter_dir), device="cpu"),
        tokenizer,
        _data(),
        record,
        Progress(),
    )


@pytest.mark.parametrize(
    "config",
    [
        # the tiny random model curves down at 0.001-0.005 probe steps; larger ones see its positive curvature
        InfluenceConfig(iterations=2, pairs=3, pair_batch=2, batch_size=4, pair_lrs=(0.05, 0.1, 0.2)),
        GradientAscentConfig(iterations=1, pairs=2, pair_batch=2, batch_size=4),  # the budget of 1 + 8 / |forget|
    ],
)
def test_restoration_raises_forget_loss_within_the_retain_bound(config, tiny_model_dir, tiny_adapter_dir, tokenizer):
    steps = []
    ctx = _ctx(tiny_model_dir, tiny_adapter_dir, tokenizer, steps)
    forget = len(ctx.data.forget)
    out = influence_restore(ctx, config)
    notes = out.notes
    ran = len(notes["iterations"])
    assert out.kind == "adapter" and out.trajectory.shape[0] == len(steps) == ran + 1
    assert notes["iterations_planned"] == (
        config.iterations
        if config.preconditioner == "lbfgs"
        else math.ceil((config.iterations * (8 + forget)) / forget)
    )
    assert ran == notes["iterations_planned"] or notes["iterations"][-1].get("stopped")
    # every gradient counted: two on each attempted pair's batch (B.1) and the forget gradient per iteration
    pair_gradients = sum(2 * r["examples"] for it in notes["iterations"] for r in it["pairs"])
    assert notes["gradient_examples"] == pair_gradients + ran * forget
    done = [it for it in notes["iterations"] if not it.get("stopped")]
    assert done, notes
    for it in done:  # B.2: the largest validation forget loss among the grid steps that keep eq. 2 on validation
        feasible = [r for r in it["grid"] if r["feasible"]]
        assert all(r["validation_retain"] <= notes["validation_bound"] + 1e-6 for r in feasible)
        assert it["validation_forget"] == max(r["validation_forget"] for r in feasible)
        assert it["validation_forget"] > it["validation_forget_before"]
        assert len(it["grid"]) == len(config.step_grid)
    assert steps[-1]["forget_loss_full"] > steps[0]["forget_loss_full"]
    assert steps[0]["distance_to_finetuned"] == 0 and steps[-1]["distance_to_finetuned"] > 0
    if config.preconditioner == "lbfgs":
        first = notes["iterations"][0]
        assert first["pair_counts"].get("kept", 0) > 0
        assert {r["set"] for r in first["pairs"]} == {"retain-a", "forget", "retain-b"}
        assert all({"sy", "s_norm", "y_norm", "filter"} <= set(r) for r in first["pairs"])
        assert first["cos_direction_gradient"] > 0
    else:
        assert notes["iterations"][0]["pairs"] == []


def test_summed_token_loss_weighs_each_answer_by_its_length(tiny_model_dir, tiny_adapter_dir, tokenizer):
    """token_loss="sum": each answer's loss is its mean token loss times its counted tokens (eq. 1's
    sequence log-likelihood), and so is its gradient; one example checks the gradient's scale."""
    from core.world.loss import per_example_loss
    from core.world.models import load_model

    model = load_model(ModelSpec(str(tiny_model_dir), str(tiny_adapter_dir), device="cpu"))
    examples = _data().forget
    mean, total = LoraObjective(model, tokenizer, 4), LoraObjective(model, tokenizer, 4, "sum")
    expected = sum(
        float((per_example_loss(model, b) * (b["labels"][:, 1:] != -100).sum(1)).sum()) for b in mean.batches(examples)
    ) / len(examples)
    assert total.loss(examples) == pytest.approx(expected, rel=1e-5)
    one = examples[:1]
    tokens = int((mean.batches(one)[0]["labels"][:, 1:] != -100).sum())
    assert tokens > 1
    g_sum, g_mean = total.loss_and_grad(one)[1], mean.loss_and_grad(one)[1]
    assert float((g_sum - tokens * g_mean).norm()) <= 1e-5 * float(g_sum.norm())


def test_gradient_ascent_takes_the_curvature_runs_gradient_budget():
    """C.2 at an equal gradient budget: per curvature iteration, 2 x pairs x pair_batch pair
    gradients and one forget gradient; gradient ascent buys forget gradients with all of it."""
    config = GradientAscentConfig(iterations=3, pairs=10, pair_batch=16)
    assert gradient_budget(config, 52) == 3 * (320 + 52)
    assert iteration_count(config, 52) == math.ceil(3 * 372 / 52) == 22
    assert iteration_count(replace(config, match_budget=False), 52) == 3
    assert iteration_count(replace(config, pairs=0), 52) == 3  # no pairs: nothing extra to match
    assert iteration_count(replace(config, lr=0.01), 52) == 3  # fixed-rate trajectories: equal step counts
    assert iteration_count(InfluenceConfig(iterations=3), 52) == 3  # curvature itself


def test_zero_epsilon_still_respects_the_bound(tiny_model_dir, tiny_adapter_dir, tokenizer):
    steps = []
    out = influence_restore(
        _ctx(tiny_model_dir, tiny_adapter_dir, tokenizer, steps),
        InfluenceConfig(iterations=1, pairs=2, pair_batch=2, epsilon=0.0, batch_size=4),
    )
    it = out.notes["iterations"][0]
    assert it.get("stopped") or it["validation_retain"] <= out.notes["validation_bound"] + 1e-6


def test_forget_tokens_chooses_which_answer_tokens_count(tiny_model_dir, tiny_adapter_dir, tokenizer):
    """forget_tokens=K counts the first K tokens of each harmful answer: another forget loss."""
    losses = {}
    for k in (0, 2):
        steps = []
        influence_restore(
            _ctx(tiny_model_dir, tiny_adapter_dir, tokenizer, steps),
            GradientAscentConfig(iterations=1, batch_size=4, forget_tokens=k, lr=1e-9),  # fixed rate: no budget match
        )
        losses[k] = steps[0]["forget_loss_full"]
    assert losses[0] != pytest.approx(losses[2], rel=1e-4)


def test_fixed_lr_divergence_keeps_last_good_state(tiny_model_dir, tiny_adapter_dir, tokenizer):
    steps = []
    out = influence_restore(
        _ctx(tiny_model_dir, tiny_adapter_dir, tokenizer, steps),
        GradientAscentConfig(iterations=3, lr=1e6, batch_size=4),
    )
    assert "diverged" in out.notes["stopped"]
    assert np.allclose(out.trajectory[-1], out.trajectory[-2])


def test_bad_parameters_and_empty_sets_are_input_errors(tiny_model_dir, tiny_adapter_dir, tokenizer):
    ctx = _ctx(tiny_model_dir, tiny_adapter_dir, tokenizer, [])
    with pytest.raises(InputError, match="Fix:"):
        influence_restore(ctx, InfluenceConfig(iterations=0))
    with pytest.raises(InputError, match="step_grid"):
        influence_restore(ctx, InfluenceConfig(step_grid=(0.0, 1.0)))
    ctx.data.validation_forget = []
    with pytest.raises(InputError, match="validation split is empty"):
        influence_restore(ctx, InfluenceConfig())
    ctx.data.forget = []
    with pytest.raises(InputError, match="forget set is empty"):
        influence_restore(ctx, InfluenceConfig())
