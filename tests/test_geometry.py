"""Landscape on the tiny random Llama (seconds); the correlation tests are in test_correlation.py."""

from __future__ import annotations

from dataclasses import asdict

import numpy as np
import pytest
import torch
from samples import arithmetic_examples

from core.base.errors import InputError
from core.base.progress import Progress
from core.base.tensors import cosine
from core.geometry.landscape import (
    LandscapeConfig,
    fit_radius,
    global_norm,
    gradient,
    gradient_direction,
    laplacian,
    loss_landscape,
    perturbed_parameters,
    random_direction,
    set_point,
    structural_difference,
    surface,
)
from core.world.data import Example
from core.world.models import ModelSpec, load_model


@pytest.fixture()
def pair(tiny_model_dir, tiny_adapter_dir):
    return {"base": ModelSpec(str(tiny_model_dir)), "finetuned": ModelSpec(str(tiny_model_dir), str(tiny_adapter_dir))}


# ---------------------------------------------------------------------------- landscape
def _plane(n: int = 9) -> tuple[np.ndarray, np.ndarray, float]:
    h = 0.25
    x, y = np.meshgrid(np.arange(n) * h - 1.0, np.arange(n) * h - 1.0, indexing="ij")
    return x, y, h


def test_laplacian_of_polynomials_is_their_closed_form_at_interior_points():
    x, y, h = _plane()
    assert np.allclose(laplacian(3 * x**2 + 5 * y**2, h), 16.0)
    assert np.allclose(laplacian(x**3 + x * y**2, h), 8 * x[1:-1, 1:-1])  # the 5-point stencil is exact on cubics
    assert laplacian(x**3, h).shape == (7, 7)


def test_structural_difference_ignores_slope_offset_and_scale_but_not_curvature():
    x, y, _ = _plane()
    bowl = x**3 + np.sin(2 * y) + x**2 * y
    assert structural_difference(bowl, 2 * bowl + 5 + 7 * x - 3 * y) == pytest.approx(0.0, abs=1e-9)
    assert structural_difference(bowl, -bowl) == pytest.approx(200.0)
    assert structural_difference(bowl, np.cos(4 * x * y)) > 10
    assert np.isnan(structural_difference(x**2 + y**2, bowl)), "a constant Laplacian has no correlation"


def _tiny_params(model_dir, dtype="auto"):
    model = load_model(ModelSpec(str(model_dir), dtype=dtype))
    return model, perturbed_parameters(model, ("self_attn", "mlp"))


def test_gradient_directions_are_eq6_with_one_global_norm(tiny_model_dir, tokenizer):
    from core.world.loss import encode

    model, params = _tiny_params(tiny_model_dir)
    grads = gradient(model, params, [encode(tokenizer, arithmetic_examples(4, "g"))])
    d1, d2 = gradient_direction(grads, 1000), gradient_direction(grads, 2000)
    assert global_norm(d1) == pytest.approx(1.0, rel=1e-6) and global_norm(d2) == pytest.approx(1.0, rel=1e-6)
    gen = torch.Generator().manual_seed(1000)
    raw = {n: g * torch.randn(g.shape, generator=gen) for n, g in grads.items()}
    norm = global_norm(raw)
    assert all(torch.allclose(d1[n], raw[n] / norm, rtol=1e-5, atol=1e-9) for n in raw)
    norms = [float(d.norm()) for d in d1.values()]
    assert max(norms) / min(norms) > 2, "tensors keep their relative sizes (no per-tensor rescaling)"
    assert abs(cosine(d1, d2)) < 0.3


def test_random_directions_get_the_reference_row_norms(tiny_model_dir):
    _, params = _tiny_params(tiny_model_dir)
    name = next(iter(params))
    r = random_direction(params, 1000)
    assert torch.allclose(r[name].norm(dim=1), params[name].norm(dim=1), rtol=1e-4)
    rows = {n: torch.full((p.shape[0], 1), 2.0) for n, p in params.items()}
    assert torch.allclose(random_direction(params, 1000, rows)[name].norm(dim=1), torch.tensor(2.0), rtol=1e-4)


def test_every_grid_point_is_the_closed_form_in_bf16_and_weights_come_back(tiny_model_dir, tokenizer, monkeypatch):
    import core.geometry.landscape as landscape

    model, params = _tiny_params(tiny_model_dir, dtype="bfloat16")
    assert next(iter(params.values())).dtype == torch.bfloat16
    theta0 = {n: p.detach().clone() for n, p in params.items()}
    d1, d2 = random_direction(params, 1), random_direction(params, 2)
    seen = []
    monkeypatch.setattr(
        landscape, "mean_loss", lambda m, b: seen.append({n: p.detach().clone() for n, p in params.items()}) or 1.0
    )
    coords = np.linspace(-0.3, 0.3, 5)
    surface(model, params, d1, d2, coords, [], Progress(), "t")
    assert len(seen) == 25
    for k, weights in enumerate(seen):
        a, b = coords[k // 5], coords[k % 5]
        for n, w in weights.items():
            terms = (theta0[n].double(), a * d1[n].double(), b * d2[n].double())
            exact = sum(terms)
            # one bf16 rounding of the exact sum, plus fp32's rounding of the terms (cancellation)
            half_ulp = 2.0 ** (torch.floor(torch.log2(exact.abs().clamp_min(1e-30))) - 8)
            fp32 = 2.0**-22 * sum(t.abs() for t in terms)
            assert torch.all((w.double() - exact).abs() <= half_ulp + fp32), (a, b, n)
    assert all(torch.equal(theta0[n], p) for n, p in params.items())


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_a_grid_row_from_its_base_is_set_point_bit_for_bit(tiny_model_dir, monkeypatch, dtype):
    import core.geometry.landscape as landscape

    model, params = _tiny_params(tiny_model_dir, dtype=dtype)
    theta0 = {n: p.detach().clone() for n, p in params.items()}
    kept = {n: p.clone() for n, p in theta0.items()}
    d1, d2 = random_direction(params, 1), random_direction(params, 2)
    coords = np.linspace(-0.3, 0.3, 4)
    seen: list[dict] = []
    monkeypatch.setattr(
        landscape, "mean_loss", lambda m, b: seen.append({n: p.detach().clone() for n, p in params.items()}) or 1.0
    )
    for row_base in (True, False):
        landscape._grid_row((model, params, theta0), (d1, d2, coords, [], row_base), 1)
    from_base, per_point = seen[:4], seen[4:]
    assert all(torch.equal(x[n], y[n]) for x, y in zip(from_base, per_point) for n in params)
    assert not torch.equal(from_base[0][next(iter(params))], from_base[1][next(iter(params))])
    assert all(torch.equal(theta0[n], p) for n, p in kept.items())  # the base never wrote into theta0


def test_set_point_without_a_second_direction_moves_along_the_first(tiny_model_dir):
    _, params = _tiny_params(tiny_model_dir)
    theta0 = {n: p.detach().clone() for n, p in params.items()}
    d1 = random_direction(params, 3)
    set_point(params, theta0, d1, None, 0.25)
    assert all(torch.allclose(p, theta0[n] + 0.25 * d1[n]) for n, p in params.items())


def test_surface_restores_weights_exactly_and_center_is_the_model_loss(tiny_model_dir, tokenizer):
    from core.geometry.landscape import mean_loss
    from core.world.loss import encode

    model, params = _tiny_params(tiny_model_dir)
    before = {n: p.detach().clone() for n, p in params.items()}
    batches = [encode(tokenizer, arithmetic_examples(4, "s"))]
    d1, d2 = random_direction(params, 1), random_direction(params, 2)
    coords = np.linspace(-0.1, 0.1, 5)
    values = surface(model, params, d1, d2, coords, batches, Progress(), "t")
    assert all(torch.equal(before[n], p) for n, p in params.items())
    assert values[2, 2] == pytest.approx(mean_loss(model, batches), rel=1e-5)
    assert len({round(v, 6) for v in values.ravel()}) > 10


def _asymmetric(t: float) -> float:
    return 2.0 + (t**2 if t > 0 else 4 * t**2)  # +50% (to 3.0) at t = 1 on the right, t = -0.5 on the left


@pytest.mark.parametrize("start", [0.001, 0.5, 3.0])
def test_fit_radius_finds_the_planted_radius_on_the_nearer_side(start):
    fit = fit_radius(_asymmetric, 2.0, 0.5, start=start, cap=100.0)
    assert fit["radius"] == pytest.approx(0.5, rel=0.03) and not fit["capped"]
    assert fit["target_loss"] == pytest.approx(3.0)


def test_fit_radius_caps_flat_losses_and_treats_nan_as_risen():
    flat = fit_radius(lambda t: 1.0, 1.0, 0.5, start=0.01, cap=2.0)
    assert flat["capped"] and flat["radius"] == 2.0
    cliff = fit_radius(lambda t: float("nan") if abs(t) > 0.3 else 1.0, 1.0, 0.5, start=0.01, cap=2.0)
    assert cliff["radius"] == pytest.approx(0.3, rel=0.03)


def _landscape_sets() -> dict[str, list[Example]]:
    return {"harmful": arithmetic_examples(4, "h"), "benign": arithmetic_examples(4, "b")}


def test_landscape_end_to_end_reports_rows_floor_and_is_cached(pair):
    rows = []
    config = LandscapeConfig(grid=5, radius=0.1, samples=4, directions="random")
    result = loss_landscape(
        pair, _landscape_sets(), config, Progress(lambda e: rows.append(e.partial) if e.partial else None)
    )
    assert set(result["structural_difference"]) == {"harmful", "benign"}
    assert np.array(result["surfaces"]["harmful"]["finetuned"]).shape == (5, 5)
    assert len([r for r in rows if r and "row" in r]) == 2 * 2 * 3 * 5  # sets x models x (halves + seeds) x rows
    assert set(result["structural_difference_repeats"]["benign"]) == {
        "half_a",
        "half_b",
        "half_a_second_seeds",
        "same_model_base",
        "same_model_finetuned",
    }
    lo, hi = result["structural_difference_interval"]["harmful"]
    assert lo <= result["structural_difference"]["harmful"] <= hi
    again = loss_landscape(pair, _landscape_sets(), config, Progress(lambda e: pytest.fail("recomputed")))
    assert again == result


def test_reported_surface_is_the_surface_on_all_samples(pair):
    config = LandscapeConfig(grid=5, radius=0.1, samples=4, directions="random")
    with_floor = loss_landscape(pair, _landscape_sets(), config)
    without = loss_landscape(pair, _landscape_sets(), LandscapeConfig(**{**asdict(config), "floor": False}))
    for s in ("harmful", "benign"):
        for m in ("base", "finetuned"):
            assert np.allclose(with_floor["surfaces"][s][m], without["surfaces"][s][m], rtol=1e-5)
    assert without["structural_difference_floor"] == {}


def test_a_model_against_itself_differs_by_nothing_and_its_floor_is_the_resampling(tiny_model_dir):
    spec = ModelSpec(str(tiny_model_dir))
    result = loss_landscape({"base": spec, "finetuned": spec}, _landscape_sets(), LandscapeConfig(grid=5, samples=4))
    for s in ("harmful", "benign"):
        assert result["structural_difference"][s] == pytest.approx(0.0, abs=1e-6)
        rep = result["structural_difference_repeats"][s]
        assert rep["half_a"] == pytest.approx(0.0, abs=1e-6) and rep["half_a_second_seeds"] == pytest.approx(
            0.0, abs=1e-6
        )
        assert rep["same_model_base"] == pytest.approx(rep["same_model_finetuned"])
        assert result["structural_difference_floor"][s] == pytest.approx(rep["same_model_base"])
        assert result["structural_difference_floor"][s] > 0


def test_fitted_radius_raises_the_base_benign_loss_by_the_rise(pair):
    config = LandscapeConfig(grid=5, samples=4, rise=0.005, floor=False)  # the tiny random model is nearly flat
    result = loss_landscape(pair, _landscape_sets(), config)
    fit = result["radius_fit"]
    assert fit["fitted"] and not fit["capped"] and fit["set"] == "benign"
    assert result["coords"][-1] == pytest.approx(result["radius"])
    d1 = result["cross_sections"]["benign"]["base"]["d1"]
    rise = max(d1[0], d1[-1]) / d1[2] - 1
    assert 0.004 < rise < 0.006, rise


@pytest.mark.parametrize(
    "kwargs",
    [{"grid": 3}, {"grid": 6}, {"radius": -1.0}, {"rise": 0.0}, {"directions": "pca"}, {"modules": ("nonexistent",)}],
)
def test_landscape_bad_input_is_one_line_error(pair, kwargs):
    with pytest.raises(InputError) as err:
        loss_landscape(pair, {"harmful": arithmetic_examples(3, "h")}, LandscapeConfig(samples=3, **kwargs))
    assert "\n" not in str(err.value) and "Fix:" in str(err.value)


def test_cancelled_landscape_stores_nothing_and_restores_weights(pair):
    import threading

    from core.base.errors import Cancelled

    cancel = threading.Event()
    config = LandscapeConfig(grid=5, radius=0.1, samples=3)
    sets = {"harmful": arithmetic_examples(3, "c")}

    def stop_after_first_row(event):
        if event.partial and event.partial.get("row") == 0:
            cancel.set()

    with pytest.raises(Cancelled):
        loss_landscape(pair, sets, config, Progress(stop_after_first_row, cancel))
    rows = []
    loss_landscape(pair, sets, config, Progress(lambda e: rows.append(e.partial) if e.partial else None))
    assert rows, "a cancelled run must not leave a cached result behind"
