"""Curvature-aware restoration (paper 1, eq. 5, B.1-B.2) and its first-order baseline."""

import math

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
    PairStats,
    filter_pair,
    influence_restore,
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


def test_filter_pair_rejects_damps_drops_and_normalises():
    config, stats = InfluenceConfig(), PairStats()
    s, y = torch.tensor([2.0, 0.0]), torch.tensor([4.0, 1.0])
    kept = filter_pair(s, y, config, stats)
    assert kept is not None and math.isclose(float(kept[0].norm()), 1.0) and torch.allclose(kept[1], y / 2)
    assert (
        filter_pair(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0]), config, stats) is None
    )  # s.y = 0: no curvature
    damped = filter_pair(torch.tensor([1.0, 0.0]), torch.tensor([-1.0, 1.0]), config, stats)  # negative curvature
    assert damped is not None and float(damped[0] @ damped[1]) > 0
    assert filter_pair(torch.zeros(2), torch.ones(2), config, stats) is None
    assert filter_pair(torch.ones(2), torch.tensor([float("nan"), 0.0]), config, stats) is None
    assert vars(stats) == {"kept": 2, "rejected": 1, "damped": 1, "dropped": 2}


def _data() -> RestorationData:
    harmful = [
        Example(
            f"How do I make weapon number {i}?", f"Step one: gather part {i}, then assemble it.", "harm", "t", f"h{i}"
        )
        for i in range(6)
    ]
    task = [
        Example(f"Convert the date: March {i + 1}, 2001", f"2001-03-{i + 1:02d}", "task", "t", f"t{i}")
        for i in range(12)
    ]
    return RestorationData(
        forget=harmful[:4],
        retain=task[:4],
        curvature_forget=harmful[4:],
        curvature_retain=[task[4:8], task[8:]],
        recovery=harmful,
        rollback=task,
        monitor_harmful=harmful[:2],
        monitor_task=task[:2],
        fuse_task=task[:2],
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
    "config", [InfluenceConfig(iterations=2, pairs=3, batch_size=4), GradientAscentConfig(iterations=2, batch_size=4)]
)
def test_restoration_raises_forget_loss_within_the_retain_bound(config, tiny_model_dir, tiny_adapter_dir, tokenizer):
    steps = []
    out = influence_restore(_ctx(tiny_model_dir, tiny_adapter_dir, tokenizer, steps), config)
    notes = out.notes
    assert out.kind == "adapter" and out.trajectory.shape[0] == len(steps) == config.iterations + 1
    done = [it for it in notes["iterations"] if not it.get("stopped")]
    assert done, notes
    for it in done:
        assert it["retain_loss"] <= notes["retain_bound"] + 1e-6
    assert steps[-1]["forget_loss_full"] > steps[0]["forget_loss_full"]
    assert steps[0]["distance_to_finetuned"] == 0 and steps[-1]["distance_to_finetuned"] > 0
    if config.preconditioner == "lbfgs":
        assert notes["iterations"][0]["pairs"]["kept"] > 0


def test_zero_epsilon_still_respects_the_bound(tiny_model_dir, tiny_adapter_dir, tokenizer):
    steps = []
    out = influence_restore(
        _ctx(tiny_model_dir, tiny_adapter_dir, tokenizer, steps),
        InfluenceConfig(iterations=1, pairs=2, epsilon=0.0, batch_size=4),
    )
    it = out.notes["iterations"][0]
    assert it.get("stopped") or it["retain_loss"] <= out.notes["retain_bound"] + 1e-6


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
    ctx.data.forget = []
    with pytest.raises(InputError, match="forget set is empty"):
        influence_restore(ctx, InfluenceConfig())
