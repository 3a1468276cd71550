"""Geometry-engine benchmarks on the demo world (one run each, printed as ratios):

(a) landscape throughput: grid-point evaluations per second against the raw forward-pass rate
    of the same model on the same tokens (target >= 0.9 of that ceiling);
(b) one Hessian-vector product against one gradient on the same batch (target <= 3x);
(c) wall time of a default landscape (both models, both data sets) and a default basin;
(d) peak memory (RSS) of the landscape run against the model's size.

Run: .venv/bin/python bench/geometry.py [--skip-defaults]
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.timing import median_time  # noqa: E402
from core.base.progress import Progress  # noqa: E402
from core.geometry.basin import BasinConfig, search_on  # noqa: E402
from core.geometry.basin import _model_basin as model_basin  # noqa: E402
from core.geometry.correlation import default_sets  # noqa: E402
from core.geometry.curvature import HessianOperator, select_parameters  # noqa: E402
from core.geometry.landscape import (  # noqa: E402
    LandscapeConfig,
    _batches,
    mean_loss,
    perturbed_parameters,
    random_direction,
    surface,
)
from core.geometry.landscape import _compute as landscape_compute  # noqa: E402
from core.world.data import harmful_splits, safety_probe  # noqa: E402
from core.world.demo import WorldConfig, build_world  # noqa: E402
from core.world.loss import encode  # noqa: E402
from core.world.models import load_model, load_tokenizer  # noqa: E402


def landscape_throughput(world, grid: int = 5) -> dict:
    model, tok = load_model(world.base_spec), load_tokenizer(world.base_spec)
    config = LandscapeConfig()
    batches = _batches(tok, default_sets(0, config.samples)["harmful"], config)
    mean_loss(model, batches)  # warm-up
    t = time.perf_counter()
    reps = 4
    for _ in range(reps):
        mean_loss(model, batches)
    forward_rate = reps / (time.perf_counter() - t)
    params = perturbed_parameters(model, config.modules)
    d1, d2 = random_direction(params, 1), random_direction(params, 2)
    t = time.perf_counter()
    surface(model, params, d1, d2, np.linspace(-0.01, 0.01, grid), batches, Progress(), "bench")
    grid_rate = grid * grid / (time.perf_counter() - t)
    return {"grid_points_per_s": grid_rate, "forward_passes_per_s": forward_rate, "ratio": grid_rate / forward_rate}


def hvp_vs_gradient(world) -> dict:
    model, tok = load_model(world.finetuned_spec), load_tokenizer(world.finetuned_spec)
    params = select_parameters(model, "lora")
    op = HessianOperator(model, params, [encode(tok, safety_probe("curvature", 0)[:8])])
    v = np.random.default_rng(0).standard_normal(op.size)
    op.gradient(), op.matvec(v)  # warm-up

    t_grad = median_time(op.gradient)
    t_hvp = median_time(lambda: op.matvec(v))
    return {"gradient_s": t_grad, "hvp_s": t_hvp, "ratio": t_hvp / t_grad, "params": op.size}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--skip-defaults", action="store_true", help="skip (c) and (d), the default full runs")
    args = ap.parse_args()
    world = build_world(WorldConfig())
    pair = {"base": world.base_spec, "finetuned": world.finetuned_spec}
    out = {"landscape_throughput": landscape_throughput(world), "hvp_vs_gradient": hvp_vs_gradient(world)}
    a, b = out["landscape_throughput"], out["hvp_vs_gradient"]
    print(
        f"(a) landscape {a['grid_points_per_s']:.3f} points/s vs forward ceiling "
        f"{a['forward_passes_per_s']:.3f}/s: {a['ratio']:.2f} (target >= 0.9)"
    )
    print(
        f"(b) HVP {b['hvp_s']:.3f}s vs gradient {b['gradient_s']:.3f}s on {b['params']:,} LoRA params: "
        f"{b['ratio']:.2f}x (target <= 3x)"
    )
    if not args.skip_defaults:
        config = LandscapeConfig()
        sets = default_sets(0, config.samples)  # what `python -m core landscape` uses
        t = time.perf_counter()
        landscape_compute(
            pair, {"harmful": sets["harmful"], "benign": sets["general"]}, config, Progress()
        )  # uncached
        t_land = time.perf_counter() - t
        rss_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        size_gb = sum(p.numel() * p.element_size() for p in load_model(world.base_spec).parameters()) / 2**30
        t = time.perf_counter()
        prompts = [e.prompt for e in harmful_splits(0)["eval"][: BasinConfig().prompts]]
        radius = search_on(world.base_spec, prompts, BasinConfig(), Progress())["radius"]  # uncached, as below
        for name, spec in pair.items():
            model_basin(spec, prompts, BasinConfig(), radius, Progress(), name)  # uncached
        t_basin = time.perf_counter() - t
        out["defaults"] = {"landscape_s": t_land, "basin_s": t_basin, "peak_rss_gb": rss_gb, "model_gb": size_gb}
        print(
            f"(c) default landscape (2 models x 2 sets, {config.grid}x{config.grid}, {config.samples} samples, "
            f"floor {'on' if config.floor else 'off'}): {t_land:.0f}s; "
            f"default basin (2 models): {t_basin:.0f}s (cached results return instantly)"
        )
        print(
            f"(d) peak RSS of the landscape run {rss_gb:.2f} GiB vs model weights {size_gb:.2f} GiB: "
            f"{rss_gb / size_gb:.1f}x"
        )
    print(json.dumps(out))


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
