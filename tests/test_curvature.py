"""Hessian-vector products, Lanczos, coupling, the three conditions and power-law fits (tiny model)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from core.base.errors import InputError
from core.geometry.curvature import (
    CurvatureConfig,
    DriftConfig,
    HessianOperator,
    conditions,
    coupling,
    curvature,
    drift_monitor,
    fit_power_laws,
    select_parameters,
    top_eigenpairs,
)
from core.world.data import Example
from core.world.loss import encode
from core.world.models import ModelSpec, load_model


def _examples(n: int, tag: str) -> list[Example]:
    return [Example(f"{tag} {i}: name a colour number {i}", f"Colour {i} is blue.") for i in range(n)]


@pytest.fixture()
def operator(tiny_model_dir, tiny_adapter_dir, tokenizer):
    torch.manual_seed(0)
    model = load_model(ModelSpec(str(tiny_model_dir), str(tiny_adapter_dir)))
    params = select_parameters(model, "layers.1.self_attn.v_proj.lora")
    return HessianOperator(model, params, [encode(tokenizer, _examples(3, "h"))])


def test_hvp_matches_finite_difference_of_gradients(operator):
    rng = np.random.default_rng(0)
    v = rng.standard_normal(operator.size)
    hv = operator.matvec(v)
    eps = 1e-3
    theta = [p.detach().clone() for p in operator.params]

    def grad_at(sign: float) -> np.ndarray:
        with torch.no_grad():
            for p, t, dv in zip(operator.params, theta, operator._split(v)):
                p.copy_(t + sign * eps * dv)
        return operator.gradient()

    fd = (grad_at(1.0) - grad_at(-1.0)) / (2 * eps)
    with torch.no_grad():
        for p, t in zip(operator.params, theta):
            p.copy_(t)
    assert np.linalg.norm(hv - fd) / np.linalg.norm(fd) < 1e-2


def test_lanczos_returns_true_eigenpairs_in_descending_order(operator):
    vals, vecs = top_eigenpairs(operator, 3, 1e-6)
    assert list(vals) == sorted(vals, reverse=True)
    for lam, v in zip(vals, vecs.T):
        assert np.linalg.norm(operator.matvec(v) - lam * v) < 1e-3 * max(1.0, abs(lam))


def test_k_out_of_range_and_empty_subset_are_errors(operator, tiny_model_dir):
    with pytest.raises(InputError, match="--k"):
        top_eigenpairs(operator, operator.size, 1e-3)
    with pytest.raises(InputError, match="matches no weight"):
        select_parameters(load_model(ModelSpec(str(tiny_model_dir))), "lora")


def test_coupling_share_and_angle():
    basis = np.eye(4)[:, :2]
    assert coupling(np.array([1.0, 0, 0, 0]), basis)["share"] == pytest.approx(1.0)
    off = coupling(np.array([1.0, 0, 1.0, 0]), basis)
    assert off["share"] == pytest.approx(0.5) and off["angle_deg"] == pytest.approx(45.0)
    assert coupling(np.array([0, 0, 0, 1.0]), basis)["angle_deg"] == pytest.approx(90.0)


def test_conditions_verdicts_follow_thresholds():
    config = CurvatureConfig(k=2)
    hold = conditions(
        np.array([50.0, 30.0]), trace=100.0, n_params=10_000, couple={"share": 0.2, "angle_deg": 63.0}, config=config
    )
    assert hold["low_dimensional"]["value"] == pytest.approx(0.8) and hold["all_hold"]
    assert hold["sharp_curvature"]["value"] == pytest.approx(50.0 / (100.0 / 10_000))
    flat = conditions(
        np.array([1.0, 1.0]), trace=100.0, n_params=100, couple={"share": 0.0, "angle_deg": 90.0}, config=config
    )
    assert (
        not flat["low_dimensional"]["holds"] and not flat["sharp_curvature"]["holds"] and not flat["coupling"]["holds"]
    )


def test_power_law_fit_recovers_the_quartic():
    t = list(range(0, 41, 4))
    losses = [1.0 + 2e-6 * s**4 for s in t]
    fits = fit_power_laws(t, losses)
    assert fits["free"]["exponent"] == pytest.approx(4.0, abs=1e-6)
    assert fits["t^4"]["r2"] == pytest.approx(1.0) and fits["t^2"]["r2"] < 0.99


def test_curvature_end_to_end_on_lora_params(tiny_model_dir, tiny_adapter_dir):
    spec = ModelSpec(str(tiny_model_dir), str(tiny_adapter_dir))
    result = curvature(spec, _examples(4, "s"), _examples(4, "t"), CurvatureConfig(k=2, samples=4, trace_probes=2))
    assert len(result["safety_eigenvalues"]) == 2 and result["n_params"] > 2
    assert set(result["conditions"]) == {"low_dimensional", "sharp_curvature", "coupling", "all_hold"}
    assert 0.0 <= result["coupling"]["share"] <= 1.0 + 1e-9


def test_drift_monitor_records_the_alignment_loss_on_schedule(tiny_model_dir):
    result = drift_monitor(
        ModelSpec(str(tiny_model_dir)),
        _examples(8, "t"),
        _examples(4, "p"),
        DriftConfig(steps=6, every=2, batch_size=2, lr=1e-2),
    )
    assert result["steps"] == [0, 2, 4, 6]
    assert len(set(result["alignment_loss"])) > 1 and len(result["train_loss"]) == 6
    assert {"free", "t^2", "t^4"} <= set(result["fits"])
