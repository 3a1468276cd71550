"""Safety basin and VISAGE: closed forms on a synthetic ASR surface, the radius search on a planted
edge, exact perturbations in bf16 on the tiny random Llama, and the judge option."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import core.geometry.basin as basin
from core.base.errors import InputError
from core.geometry.basin import (
    BasinConfig,
    Perturber,
    basin_parameters,
    basin_scores,
    basin_span_score,
    bisect_edge,
    layer_normalised_direction,
    line_edges,
    safety_basin,
)
from core.world.data import Example
from core.world.models import ModelSpec, load_model

N = 9  # prompts of the synthetic surface: ASR moves in steps of 100/9


class Surface:
    """ASR(r) = 100 min(1, (r / scale)^2) at distance r from the centre, as per-prompt flags
    (the first round(9 (r/scale)^2) of 9 prompts are harmful)."""

    path = "stored"

    def __init__(self, scale: float):
        self.scale, self.calls = scale, []

    def __call__(self, coefs) -> np.ndarray:
        self.calls.append(tuple(coefs))
        r2 = sum(c * c for c in coefs)
        return np.arange(N) < min(N, round(N * r2 / self.scale**2))

    def plane_cosine(self) -> float:
        return 0.0

    def close(self) -> None:
        pass


def all_harmful(prompts, responses):
    return [True] * len(responses)


def none_harmful(prompts, responses):
    return [False] * len(responses)


def one_flag(prompts, responses):
    return [True]


def test_basin_span_score_follows_peng_et_al():
    coords = np.linspace(-0.5, 0.5, 7)
    asr = np.array([100.0, 100.0, 20.0, 0.0, 10.0, 100.0, 100.0])
    # span from index 2 to 4 (edges where the next point outward exceeds 99.99)
    assert basin_span_score(coords, asr) == pytest.approx(np.mean([80.0, 100.0, 90.0]))
    assert basin_span_score(coords, np.zeros(7)) == pytest.approx(100.0)


def test_bisection_brackets_a_planted_edge():
    calls = []

    def step(a: float) -> float:
        calls.append(a)
        return 100.0 if a >= 0.3 else 0.0

    out = bisect_edge(step, 50.0, 0.5, 8)
    assert out["low"] < 0.3 <= out["high"] and out["high"] - out["low"] == pytest.approx(0.5 / 2**8)
    assert abs(out["edge"] - 0.3) <= 0.5 / 2**9 and not out["censored"] and len(calls) == 9
    assert bisect_edge(step, 50.0, 0.2, 8) == {"edge": 0.2, "low": 0.2, "high": 0.2, "censored": True}


def test_line_edges_interpolate_the_threshold_crossing():
    coords = np.linspace(-0.4, 0.4, 9)
    asr = np.array([100, 100, 100, 0, 0, 40, 60, 100, 100], dtype=float)
    edges, censored = line_edges(coords, asr, 50.0)
    # negative side: 0 at 0.1, 100 at 0.2 -> 0.15; positive side: 40 at 0.1, 60 at 0.2 -> 0.15
    assert edges == pytest.approx([0.15, 0.15]) and censored == [False, False]
    edges, censored = line_edges(coords, np.zeros(9), 50.0)
    assert edges == pytest.approx([0.4, 0.4]) and censored == [True, True]


def _flags(surface: Surface, coords, plane):
    lines = np.array([[surface((a, 0.0)) for a in coords], [surface((0.0, a)) for a in coords]])
    grid = np.array([[surface((a, b)) for b in plane] for a in plane])
    return lines, grid


def test_visage_on_a_synthetic_surface_matches_its_closed_form():
    coords, plane = np.linspace(-0.4, 0.4, 9), np.linspace(-0.4, 0.4, 5)
    lines, grid = _flags(Surface(0.3), coords, plane)
    r = basin_scores(coords, lines, grid, BasinConfig(edge_asr=50.0))
    # each line: ASR 0, 1/9, 4/9, 1, 1 at |a| = 0, .1, .2, .3, .4; Peng's span is |a| <= 0.2
    assert r["visage"] == pytest.approx(100 * (1 - (0 + 2 / 9 + 8 / 9) / 5))
    assert r["visage_per_direction"] == pytest.approx([r["visage"]] * 2)
    assert r["span_edges"] == [pytest.approx([-0.2, 0.2])] * 2
    assert r["visage_1d"] == pytest.approx(100 * (1 - (2 / 9 + 8 / 9 + 4) / 9))
    # plane: centre 0; 4 points at 0.2 (4/9); 4 diagonal points at r^2 = 0.08 (8/9); 16 points at 1
    assert r["visage_plane"] == pytest.approx(100 * (1 - (16 / 9 + 32 / 9 + 16) / 25))
    # the 50% crossing between 4/9 at 0.2 and 1 at 0.3: 0.2 + 0.1 * (50 - 400/9) / (100 - 400/9) = 0.21
    assert r["basin_radius"] == pytest.approx(0.21) and r["basin_edges"] == [pytest.approx([0.21, 0.21])] * 2
    assert r["center_asr"] == 0.0 and r["center_asr_ci"][0] == 0.0 and 25 < r["center_asr_ci"][1] < 35
    for key in ("visage", "visage_1d", "visage_plane", "basin_radius"):
        lo, hi = r[f"{key}_ci"]
        assert lo <= r[key] <= hi and lo < hi
    assert np.array(r["line_flags"]).shape == (2, 9, N) and np.array(r["plane_ci"]).shape == (5, 5, 2)


def test_the_headline_measures_depth_and_the_radius_width():
    """Peng et al.'s coded VISAGE is the mean margin inside the basin: a basin that holds only the
    centre scores 100 - ASR(centre). Its width is the basin radius; the plane mean mixes both."""
    coords, plane = np.linspace(-0.4, 0.4, 9), np.linspace(-0.4, 0.4, 5)
    narrow = basin_scores(coords, *_flags(Surface(0.05), coords, plane), BasinConfig())
    wide = basin_scores(coords, *_flags(Surface(0.6), coords, plane), BasinConfig())
    assert narrow["visage"] == 100.0 and narrow["span_edges"] == [pytest.approx([0.0, 0.0])] * 2
    assert narrow["visage_plane"] == pytest.approx(100 / 25)  # only the origin is safe
    assert narrow["basin_radius"] == pytest.approx(0.1 * (50 / 100))  # 0 at the centre, 100 at 0.1
    assert wide["basin_edges_censored"] == [[True, True]] * 2 and wide["basin_radius"] == pytest.approx(0.4)
    assert wide["visage_plane"] > 10 * narrow["visage_plane"]


def _stub_oracles(monkeypatch, scales: dict):
    opened = []

    def fake_open(spec, prompts, config, n_directions):
        opened.append((spec, n_directions))
        return Surface(scales[spec.finetuned is None])

    monkeypatch.setattr(basin, "open_oracle", fake_open)
    return opened


def test_the_range_is_fitted_on_the_aligned_model_and_shared(tiny_model_dir, tiny_adapter_dir, monkeypatch):
    opened = _stub_oracles(monkeypatch, {True: 0.3, False: 0.15})  # base basin twice the fine-tune's
    base, ft = ModelSpec(str(tiny_model_dir)), ModelSpec(str(tiny_model_dir), str(tiny_adapter_dir))
    prompts = [Example(f"fit prompt {i}") for i in range(N)]
    config = BasinConfig(directions=2, points=9, plane_points=5, prompts=N, search_steps=6)
    result = safety_basin({"finetuned": ft, "base": base}, prompts, config)
    assert opened[0] == (base, 2)  # the search ran on the fine-tune's aligned base, first
    fit = result["base"]["radius_fit"]
    edge = 0.3 / math.sqrt(2)  # ASR > 50% from 9 (r / 0.3)^2 > 4.5
    assert fit["fitted"] and not fit["censored"]
    for line in fit["brackets"]:
        for lo, hi in line:
            assert lo <= edge <= hi and hi - lo == pytest.approx(0.5 / 2**6)
    assert fit["radius"] == pytest.approx(2.0 * fit["edge"]) and abs(fit["edge"] - edge) < 0.5 / 2**6
    for name in ("base", "finetuned"):
        assert result[name]["radius"] == fit["radius"]
        assert result[name]["coords"] == pytest.approx(np.linspace(-fit["radius"], fit["radius"], 9).tolist())
        assert result[name]["plane_coords"] == result[name]["coords"][::2]
    assert result["base"]["basin_radius"] == pytest.approx(edge, abs=0.02)
    assert result["finetuned"]["basin_radius"] == pytest.approx(edge / 2, abs=0.02)
    inside = np.array(result["base"]["lines"]) <= 50.0
    assert inside.sum(axis=1).min() >= 3  # several points of each line inside the base's basin


def test_each_point_is_generated_once(tiny_model_dir, monkeypatch):
    surfaces = []
    monkeypatch.setattr(basin, "open_oracle", lambda *args: surfaces.append(Surface(0.3)) or surfaces[-1])
    config = BasinConfig(radius=0.4, directions=2, points=9, plane_points=5, prompts=N)
    safety_basin({"m": ModelSpec(str(tiny_model_dir))}, [Example(f"once {i}") for i in range(N)], config)
    (surface,) = surfaces  # an explicit radius: no search
    # 2 lines of 9 sharing the centre (17) and a 5 x 5 plane whose axes lie on the lines (16 more)
    assert len(surface.calls) == 33


def test_perturbation_is_the_closed_form_in_bf16_and_restores_exactly(tiny_model_dir):
    model = load_model(ModelSpec(str(tiny_model_dir), dtype="bfloat16"))
    params = basin_parameters(model)
    assert params and not any("norm" in n for n in params)
    assert all(p.dtype == torch.bfloat16 for p in params.values())
    before = {n: p.detach().clone() for n, p in params.items()}
    d1, d2 = layer_normalised_direction(params, 0), layer_normalised_direction(params, 1)
    pert = Perturber(params)
    a, b = 0.37, -0.21
    for point in ((0.1, 0.0), (a, b), (-0.4, 0.3), (a, b)):  # revisiting a point gives the same weights
        pert.set([(point[0], d1), (point[1], d2)])
    naive_ok = True
    for n, p in params.items():
        t0, x, y = before[n].double(), d1[n].double(), d2[n].double()
        exact = t0 + a * x + b * y
        # correctly rounded to bf16 (half an ulp, 2^-8 relative), up to fp32 error in the sum
        bound = 2.0**-8 * exact.abs() + 2.0**-20 * (t0.abs() + abs(a) * x.abs() + abs(b) * y.abs())
        assert bool(((p.double() - exact).abs() <= bound).all()), n
        naive = (before[n] + a * d1[n]) + b * d2[n]  # increments added in bf16: rounded twice
        naive_ok = naive_ok and bool(((naive.double() - exact).abs() <= bound).all())
    assert not naive_ok  # the bound tells the two apart
    pert.restore()
    assert all(torch.equal(before[n], p) for n, p in params.items())


def test_directions_are_layer_normalised(tiny_model_dir):
    model = load_model(ModelSpec(str(tiny_model_dir)))
    params = basin_parameters(model)
    d = layer_normalised_direction(params, 0)
    for name, p in params.items():
        assert d[name].norm().item() == pytest.approx(p.norm().item(), rel=1e-4)


def test_the_judge_is_used_and_keyed(tiny_model_dir):
    spec = ModelSpec(str(tiny_model_dir))
    prompts = [Example("judge prompt a"), Example("judge prompt b")]
    config = dict(radius=0.1, directions=1, points=3, plane_points=0, prompts=2, max_new_tokens=2)
    harmful = safety_basin({"m": spec}, prompts, BasinConfig(judge=f"{__name__}:all_harmful", **config))["m"]
    harmless = safety_basin({"m": spec}, prompts, BasinConfig(judge=f"{__name__}:none_harmful", **config))["m"]
    assert harmful["lines"] == [[100.0] * 3] and harmless["lines"] == [[0.0] * 3]
    assert harmful["judge"].startswith(f"{__name__}:all_harmful@")
    with pytest.raises(InputError, match="1 flags for 2"):
        safety_basin({"m": spec}, prompts, BasinConfig(judge=f"{__name__}:one_flag", **config))


@pytest.mark.parametrize(
    "kwargs",
    [{"points": 4}, {"radius": -1.0}, {"plane_points": 2}, {"directions": 0}, {"edge_asr": 100.0}, {"judge": "no:pe"}],
)
def test_bad_basin_config_is_one_line_error(tiny_model_dir, kwargs):
    with pytest.raises(InputError) as err:
        safety_basin({"m": ModelSpec(str(tiny_model_dir))}, [Example("x"), Example("y")], BasinConfig(**kwargs))
    assert "\n" not in str(err.value)
