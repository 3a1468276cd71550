"""Correlation and landscape on the tiny random Llama (seconds)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from core.base.errors import InputError
from core.base.progress import Progress
from core.base.tensors import cosine
from core.geometry.correlation import CorrelationConfig, loss_correlation, pearson
from core.geometry.landscape import (
    LandscapeConfig,
    gradient,
    gradient_direction,
    loss_landscape,
    perturbed_parameters,
    random_direction,
    structural_difference,
    surface,
)
from core.world.data import Example
from core.world.models import ModelSpec, load_model


def _examples(n: int, tag: str) -> list[Example]:
    return [Example(f"{tag} question number {i}: what is {i} plus {i * 3}?", f"It is {i + i * 3}.") for i in range(n)]


@pytest.fixture()
def pair(tiny_model_dir, tiny_adapter_dir):
    return {"base": ModelSpec(str(tiny_model_dir)), "finetuned": ModelSpec(str(tiny_model_dir), str(tiny_adapter_dir))}


def test_pearson_matches_numpy_and_has_a_ci():
    rng = np.random.default_rng(0)
    x = rng.normal(size=50)
    y = x + rng.normal(scale=0.5, size=50)
    r = pearson(list(x), list(y))
    assert r["r"] == pytest.approx(np.corrcoef(x, y)[0, 1])
    assert r["ci_low"] < r["r"] < r["ci_high"] and r["p_value"] < 1e-6


def test_pearson_rejects_nan_and_tiny_sets():
    with pytest.raises(InputError):
        pearson([1.0, float("nan"), 2.0], [1.0, 2.0, 3.0])
    with pytest.raises(InputError):
        pearson([1.0, 2.0], [1.0, 2.0])


def test_correlation_of_a_model_with_itself_is_one(tiny_model_dir):
    spec = ModelSpec(str(tiny_model_dir))
    result = loss_correlation(
        {"base": spec, "finetuned": spec}, {"a": _examples(6, "x")}, CorrelationConfig(batch_size=4)
    )
    assert result["a"]["r"] == pytest.approx(1.0)
    assert result["a"]["mean_loss_base"] == pytest.approx(result["a"]["mean_loss_finetuned"])
    assert len(result["a"]["pairs"]) == 6


def test_correlation_rejects_empty_set(pair):
    with pytest.raises(InputError, match="empty"):
        loss_correlation(pair, {"a": []})


def test_structural_difference_is_zero_for_affine_copies_and_positive_otherwise():
    a, b = np.meshgrid(np.linspace(-1, 1, 9), np.linspace(-1, 1, 9))
    bowl = a**2 + 3 * b**2 + np.sin(3 * a)
    assert structural_difference(bowl, 2 * bowl + 5) == pytest.approx(0.0, abs=1e-9)
    assert structural_difference(bowl, np.cos(4 * a * b)) > 10


def test_directions_are_layer_normalised_and_nearly_orthogonal(tiny_model_dir, tokenizer):
    from core.world.loss import encode

    model = load_model(ModelSpec(str(tiny_model_dir)))
    params = perturbed_parameters(model, ("self_attn", "mlp"))
    grads = gradient(model, params, [encode(tokenizer, _examples(4, "g"))])
    d1, d2 = gradient_direction(grads, params, 1000), gradient_direction(grads, params, 2000)
    for name, p in params.items():
        assert d1[name].norm().item() == pytest.approx(p.norm().item(), rel=1e-4)
    assert abs(cosine(d1, d2)) < 0.3
    r = random_direction(params, 1000)
    name = next(iter(params))
    assert torch.allclose(r[name].norm(dim=1), params[name].norm(dim=1), rtol=1e-4)


def test_surface_restores_weights_exactly_and_center_is_the_model_loss(tiny_model_dir, tokenizer):
    from core.geometry.landscape import mean_loss
    from core.world.loss import encode

    model = load_model(ModelSpec(str(tiny_model_dir)))
    params = perturbed_parameters(model, ("self_attn", "mlp"))
    before = {n: p.detach().clone() for n, p in params.items()}
    batches = [encode(tokenizer, _examples(4, "s"))]
    d1, d2 = random_direction(params, 1), random_direction(params, 2)
    coords = np.linspace(-0.1, 0.1, 5)
    values = surface(model, params, d1, d2, coords, batches, Progress(), "t")
    assert all(torch.equal(before[n], p) for n, p in params.items())
    assert values[2, 2] == pytest.approx(mean_loss(model, batches), rel=1e-5)
    assert len({round(v, 6) for v in values.ravel()}) > 10


def test_landscape_end_to_end_reports_rows_and_is_cached(pair):
    rows = []
    config = LandscapeConfig(grid=3, radius=0.1, samples=4, batch_size=4)
    sets = {"harmful": _examples(4, "h"), "benign": _examples(4, "b")}
    result = loss_landscape(pair, sets, config, Progress(lambda e: rows.append(e.partial) if e.partial else None))
    assert set(result["structural_difference"]) == {"harmful", "benign"}
    assert np.array(result["surfaces"]["harmful"]["finetuned"]).shape == (3, 3)
    assert len([r for r in rows if r and "row" in r]) == 2 * 2 * 3
    again = loss_landscape(pair, sets, config, Progress(lambda e: pytest.fail("recomputed")))
    assert again == result


@pytest.mark.parametrize("kwargs", [{"grid": 2}, {"radius": 0.0}, {"directions": "pca"}, {"modules": ("nonexistent",)}])
def test_landscape_bad_input_is_one_line_error(pair, kwargs):
    with pytest.raises(InputError) as err:
        loss_landscape(pair, {"harmful": _examples(3, "h")}, LandscapeConfig(samples=3, **kwargs))
    assert "\n" not in str(err.value) and "Fix:" in str(err.value)


def test_cancelled_landscape_stores_nothing_and_restores_weights(pair):
    import threading

    from core.base.errors import Cancelled

    cancel = threading.Event()
    config = LandscapeConfig(grid=3, radius=0.1, samples=3, batch_size=4)
    sets = {"harmful": _examples(3, "c")}

    def stop_after_first_row(event):
        if event.partial and event.partial.get("row") == 0:
            cancel.set()

    with pytest.raises(Cancelled):
        loss_landscape(pair, sets, config, Progress(stop_after_first_row, cancel))
    rows = []
    loss_landscape(pair, sets, config, Progress(lambda e: rows.append(e.partial) if e.partial else None))
    assert rows, "a cancelled run must not leave a cached result behind"
