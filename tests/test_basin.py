"""Safety basin and VISAGE on the tiny random Llama with a stub ASR."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import core.geometry.basin as basin
from core.base.errors import InputError
from core.geometry.basin import (
    BasinConfig,
    Perturber,
    basin_parameters,
    basin_span_score,
    layer_normalised_direction,
    safety_basin,
)
from core.world.data import Example
from core.world.models import ModelSpec, load_model


def test_basin_span_score_follows_peng_et_al():
    coords = np.linspace(-0.5, 0.5, 7)
    asr = np.array([100.0, 100.0, 20.0, 0.0, 10.0, 100.0, 100.0])
    # span from index 2 to 4 (edges where the next point outward exceeds 99.99)
    assert basin_span_score(coords, asr) == pytest.approx(np.mean([80.0, 100.0, 90.0]))
    assert basin_span_score(coords, np.zeros(7)) == pytest.approx(100.0)


def test_directions_are_layer_normalised_and_skip_norms(tiny_model_dir):
    model = load_model(ModelSpec(str(tiny_model_dir)))
    params = basin_parameters(model)
    assert params and not any("norm" in n for n in params)
    d = layer_normalised_direction(params, 0)
    for name, p in params.items():
        assert d[name].norm().item() == pytest.approx(p.norm().item(), rel=1e-4)


def test_perturber_restores_exactly(tiny_model_dir):
    model = load_model(ModelSpec(str(tiny_model_dir)))
    params = basin_parameters(model)
    before = {n: p.detach().clone() for n, p in params.items()}
    pert = Perturber(params)
    pert.set([(0.3, layer_normalised_direction(params, 1))])
    assert not all(torch.equal(before[n], p) for n, p in params.items())
    pert.restore()
    assert all(torch.equal(before[n], p) for n, p in params.items())


def test_safety_basin_scores_with_a_stub_asr(tiny_model_dir, monkeypatch):
    def fake_asr(model, tokenizer, prompts, config):  # ASR grows with the perturbation size
        w = next(p for n, p in model.named_parameters() if "q_proj" in n)
        return float(min(100.0, 1000.0 * abs(w.sum().item() - fake_asr.base)))

    model = load_model(ModelSpec(str(tiny_model_dir)))
    fake_asr.base = next(p for n, p in model.named_parameters() if "q_proj" in n).sum().item()
    monkeypatch.setattr(basin, "_asr", fake_asr)
    prompts = [Example(f"harmful {i}") for i in range(4)]
    result = safety_basin(
        {"m": ModelSpec(str(tiny_model_dir))}, prompts, BasinConfig(directions=2, points=5, plane_points=3, prompts=4)
    )
    r = result["m"]
    assert r["center_asr"] == pytest.approx(0.0)
    assert len(r["lines"]) == 2 and len(r["lines"][0]) == 5
    assert np.array(r["plane"]).shape == (3, 3)
    assert r["visage"] == pytest.approx(float(np.mean(100.0 - np.array(r["plane"]))))
    assert r["visage_1d"] == pytest.approx(float(np.mean(100.0 - np.array(r["lines"]))))


@pytest.mark.parametrize("kwargs", [{"points": 4}, {"radius": -1.0}, {"plane_points": 2}, {"directions": 0}])
def test_bad_basin_config_is_one_line_error(tiny_model_dir, kwargs):
    with pytest.raises(InputError) as err:
        safety_basin({"m": ModelSpec(str(tiny_model_dir))}, [Example("x")], BasinConfig(**kwargs))
    assert "\n" not in str(err.value)
