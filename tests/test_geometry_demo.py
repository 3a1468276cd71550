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
    result = loss_correlation(pair, sets, CorrelationConfig(n_per_set=12))
    assert result["harmful"]["r"] > 0.9
    assert result["task"]["mean_loss_finetuned"] < 0.5 * result["task"]["mean_loss_base"]
    assert result["harmful"]["r"] > result["task"]["r"]


def test_small_landscape_has_its_minimum_region_near_the_centre(pair):
    sets = {"harmful": default_sets(0, 4)["harmful"]}
    result = loss_landscape(pair, sets, LandscapeConfig(grid=3, radius=0.005, samples=4))
    for surface in result["surfaces"]["harmful"].values():
        values = np.array(surface)
        assert values[1, 1] <= np.median(values)
    assert abs(result["cosine"]["harmful"]) < 0.05


def test_safety_hessian_on_the_lora_fine_tune_is_symmetric(pair):
    model, tokenizer = load_model(pair["finetuned"]), load_tokenizer(pair["finetuned"])
    params = select_parameters(model, "lora")
    op = HessianOperator(model, params, [encode(tokenizer, safety_probe("curvature", 0)[:4])])
    assert op.size == 30 * (2 * 8 * 576 + 8 * 576 + 8 * 192)
    rng = np.random.default_rng(0)
    u, v = rng.standard_normal(op.size), rng.standard_normal(op.size)
    hu, hv = op.matvec(u), op.matvec(v)
    assert np.all(np.isfinite(hu)) and abs(u @ hv - v @ hu) < 1e-3 * abs(u @ hv) + 1e-6
