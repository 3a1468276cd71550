"""Geometry on the real demo world, with small settings (what only the real model shows)."""

from __future__ import annotations

import numpy as np
import pytest

from core.geometry.correlation import CorrelationConfig, default_sets, loss_correlation
from core.geometry.curvature import HessianOperator, select_parameters
from core.geometry.landscape import LandscapeConfig, loss_landscape
from core.world.data import safety_probe
from core.world.demo import WorldConfig, build_world
from core.world.loss import encode
from core.world.models import load_model, load_tokenizer

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def pair():
    world = build_world(WorldConfig())
    return {"base": world.base_spec, "finetuned": world.finetuned_spec}


def test_fine_tuning_changed_task_losses_but_not_harmful_prompt_losses(pair):
    sets = {k: v[:12] for k, v in default_sets(0, 12).items()}
    result = loss_correlation(pair, sets, CorrelationConfig(n_per_set=12, null_seeds=2, null_examples=6))
    assert result["harmful"]["r"] > 0.9
    assert result["task"]["mean_loss_finetuned"] < 0.5 * result["task"]["mean_loss_base"]
    assert result["harmful"]["r"] > result["task"]["r"]
    for d in result.values():  # the null: base vs base + noise of the LoRA delta's per-tensor norms
        assert len(d["null_r"]) == 2 and d["null_n"] == 6 and d["delta_norm"] > 0
        assert -1 <= d["null_r_min"] <= d["null_r_mean"] <= d["null_r_max"] <= 1


def test_fitted_landscape_rises_by_the_rise_at_its_edge_around_a_central_minimum(pair):
    sets = {"benign": default_sets(0, 4)["general"]}
    result = loss_landscape(pair, sets, LandscapeConfig(grid=5, samples=4, floor=False))
    fit = result["radius_fit"]
    assert fit["fitted"] and not fit["capped"] and 0 < result["radius"] == result["coords"][-1]
    d1 = result["cross_sections"]["benign"]["base"]["d1"]
    assert 0.4 < max(d1[0], d1[-1]) / d1[2] - 1 < 0.6, "the base's benign loss rises by --rise (+50%) at the edge"
    for surface in result["surfaces"]["benign"].values():
        values = np.array(surface)
        assert values[2, 2] <= np.median(values)
    assert abs(result["cosine"]["benign"]) < 0.05


def test_safety_hessian_on_the_lora_fine_tune_is_symmetric(pair):
    model, tokenizer = load_model(pair["finetuned"]), load_tokenizer(pair["finetuned"])
    params = select_parameters(model, "lora")
    op = HessianOperator(model, params, [encode(tokenizer, safety_probe("curvature", 0)[:4])])
    assert op.size == 30 * (2 * 8 * 576 + 8 * 576 + 8 * 192)
    rng = np.random.default_rng(0)
    u, v = rng.standard_normal(op.size), rng.standard_normal(op.size)
    hu, hv = op.matvec(u), op.matvec(v)
    assert np.all(np.isfinite(hu)) and abs(u @ hv - v @ hu) < 1e-3 * abs(u @ hv) + 1e-6


def test_fitted_basin_has_points_inside_the_aligned_basin(pair):
    """The default fitting rule on one direction, no plane (a quarter of the default's generations,
    to keep CI short): one range for both models, several points of the base line inside its basin,
    the ends outside."""
    from core.geometry.basin import BasinConfig, safety_basin
    from core.world.data import harmful_splits

    config = BasinConfig(directions=1, plane_points=0, search_steps=4)
    result = safety_basin(pair, harmful_splits(0)["eval"], config)
    fit = result["base"]["radius_fit"]
    assert fit["fitted"] and result["base"]["radius"] == result["finetuned"]["radius"] == fit["radius"]
    assert fit["radius"] == pytest.approx(config.radius_multiple * fit["edge"])
    lines = np.array(result["base"]["lines"])
    assert ((lines <= config.edge_asr).sum(axis=1) >= 3).all() and (lines.max(axis=1) > config.edge_asr).all()
    for r in result.values():
        lo, hi = r["visage_ci"]
        assert lo <= r["visage"] <= hi and 0.0 <= r["basin_radius"] <= r["radius"]
