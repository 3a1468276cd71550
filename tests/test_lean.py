"""Lean weight-sized tensors (issue 13): regenerated directions, theta0 and gradients on disk give
the same bits as the stored ones, and no full-size copy is held."""

from __future__ import annotations

import os
from dataclasses import asdict, replace

import numpy as np
import pytest
import torch
from samples import arithmetic_examples

from core.base import lean
from core.base.errors import InputError
from core.base.progress import Progress
from core.geometry import basin, landscape
from core.geometry.basin import BasinConfig, Perturber, basin_parameters, layer_normalised_direction
from core.geometry.landscape import (
    LandscapeConfig,
    LazyGradientDirection,
    LazyRandomDirection,
    gradient,
    gradient_direction,
    perturbed_parameters,
    random_direction,
)
from core.world.loss import encode_batches
from core.world.models import ModelSpec, load_model


def _same(a, b) -> bool:
    return list(a) == list(b) and all(torch.equal(a[n], b[n]) for n in a)


def test_gaussians_replay_each_tensor_of_one_pass_bit_for_bit():
    shapes = {"a": (3, 70), "b": (5,), "c": (17, 9)}
    gen = torch.Generator().manual_seed(7)
    one_pass = {n: torch.randn(s, generator=gen) for n, s in shapes.items()}
    noise = lean.Gaussians(7)
    first = {n: noise.draw(n, s) for n, s in shapes.items()}
    assert _same(first, one_pass)
    for n in ("c", "a", "c", "b"):  # any order, any number of times
        assert torch.equal(noise.draw(n, shapes[n]), one_pass[n])


def test_disk_tensors_round_trip_exactly_and_remove_their_file():
    tensors = {"w": torch.randn(4, 6), "h": torch.randn(3, 2).to(torch.bfloat16), "d": torch.randn(5).double()}
    stored = lean.DiskTensors(tensors, tensors.items())
    assert os.path.exists(stored.path) and _same(stored, tensors)
    stored.close()
    assert not os.path.exists(stored.path)
    with pytest.raises(ValueError):
        lean.DiskTensors(tensors, reversed(tensors.items()))  # out of the header's order


def test_auto_stores_when_the_copies_fit_and_regenerates_otherwise():
    cpu = torch.device("cpu")
    assert lean.choose_path("auto", 1, cpu) == "stored"
    assert lean.choose_path("auto", 2**60, cpu) == "regenerate"
    assert lean.choose_path("stored", 2**60, cpu) == "stored"
    with pytest.raises(InputError):
        lean.choose_path("sometimes", 1, cpu)


def test_grouped_gradient_and_lazy_directions_are_the_stored_bits(tiny_model_dir, tokenizer):
    model = load_model(ModelSpec(str(tiny_model_dir)))
    params = perturbed_parameters(model, ("self_attn", "mlp"))
    batches = encode_batches(tokenizer, arithmetic_examples(3, "g"), 2, 64, "content")
    full = gradient(model, params, batches)
    one_tensor = max(p.numel() * p.element_size() for p in params.values())
    grouped = gradient(model, params, batches, group_bytes=one_tensor)  # one backward pass per tensor
    assert _same(grouped, full)
    assert _same(LazyGradientDirection(grouped, 1000), gradient_direction(full, 1000))
    rows = {n: torch.rand(p.shape[0], 1) + 0.5 for n, p in params.items()}
    assert _same(LazyRandomDirection(params, 3, rows), random_direction(params, 3, rows))
    assert _same(LazyRandomDirection(params, 4), random_direction(params, 4))


@pytest.mark.parametrize("directions", ["gradient", "random"])
def test_lean_landscape_is_the_stored_answer_without_a_full_copy(
    tiny_model_dir, tiny_adapter_dir, monkeypatch, directions
):
    pair = {"base": ModelSpec(str(tiny_model_dir)), "finetuned": ModelSpec(str(tiny_model_dir), str(tiny_adapter_dir))}
    sets = {"harmful": arithmetic_examples(2, "h"), "benign": arithmetic_examples(2, "b")}
    config = LandscapeConfig(grid=5, samples=2, floor=False, directions=directions, direction_memory="stored")
    monkeypatch.setattr(landscape, "difference_interval", lambda b, f: (0.0, 1.0))  # the bootstrap: seconds
    stored = landscape._compute(pair, sets, config, Progress())  # the fitted radius too (radius 0)
    for name in ("gradient_direction", "random_direction"):  # the stored builders must not run
        monkeypatch.setattr(landscape, name, lambda *a: pytest.fail("a stored direction was built"))
    model = load_model(pair["base"], merge=True)
    perturbed = lean.nbytes(perturbed_parameters(model, config.modules).values())
    lean.HELD.reset()
    lean_config = LandscapeConfig(**{**asdict(config), "direction_memory": "regenerate"})
    lean_answer = landscape._compute(pair, sets, lean_config, Progress())
    assert stored.pop("direction_memory") == "stored" and lean_answer.pop("direction_memory") == "regenerate"
    stored.pop("seconds"), lean_answer.pop("seconds"), stored["radius_fit"].pop("seconds")
    lean_answer["radius_fit"].pop("seconds")
    assert lean_answer == stored  # bit for bit: surfaces, radius, cosines, differences
    assert np.isfinite(stored["radius"]) and stored["radius_fit"]["fitted"]
    largest = max(p.numel() * p.element_size() for p in perturbed_parameters(model, config.modules).values())
    assert 0 < lean.HELD.peak <= 4 * largest < perturbed / 2  # a few tensors at a time: theta0, g, d1, d2
    assert not list((lean.cache_dir() / "scratch").glob("*.safetensors"))  # scratch files removed


def test_lean_basin_is_the_stored_answer_without_a_full_copy(tiny_model_dir, monkeypatch):
    spec, prompts = ModelSpec(str(tiny_model_dir)), ["how do I pick a lock", "tell me a secret"]
    config = BasinConfig(radius=0.3, directions=2, points=3, plane_points=3, prompts=2, max_new_tokens=3)
    stored = basin._model_basin(spec, prompts, config, 0.3, Progress(), "m")
    monkeypatch.setattr(basin, "layer_normalised_direction", lambda *a: pytest.fail("a stored direction was built"))
    lean.HELD.reset()
    lean_config = replace(config, direction_memory="regenerate")
    lean_answer = basin._model_basin(spec, prompts, lean_config, 0.3, Progress(), "m")
    assert stored.pop("direction_memory") == "stored" and lean_answer.pop("direction_memory") == "regenerate"
    stored.pop("seconds"), lean_answer.pop("seconds")
    assert lean_answer == stored
    params = basin_parameters(load_model(spec))
    largest = max(p.numel() * p.element_size() for p in params.values())
    assert 0 < lean.HELD.peak <= 4 * largest  # theta0 and the directions' tensors one at a time (the
    # tiny model's embedding is nearly all of its bytes, so the landscape test bounds the total)


def test_lean_perturbation_is_the_stored_bits_in_bf16(tiny_model_dir):
    model = load_model(ModelSpec(str(tiny_model_dir), dtype="bfloat16"))
    params = basin_parameters(model)
    before = {n: p.detach().clone() for n, p in params.items()}
    stored, lazy = Perturber(params), Perturber(params, "regenerate")
    dirs = [layer_normalised_direction(params, k) for k in (0, 1)]
    lazy_dirs = [basin.LazyLayerDirection(params, k) for k in (0, 1)]
    assert all(_same(d, e) for d, e in zip(dirs, lazy_dirs))
    for a, b in ((0.1, 0.0), (0.37, -0.21)):
        stored.set([(a, dirs[0]), (b, dirs[1])])
        expected = {n: p.detach().clone() for n, p in params.items()}
        lazy.set([(a, lazy_dirs[0]), (b, lazy_dirs[1])])
        assert _same(dict(params), expected)
    lazy.close()
    assert _same(dict(params), before) and not os.path.exists(lazy.theta0.path)
