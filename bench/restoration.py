"""Restoration benchmarks on the demo world (printed, one run each):

(a) one L-BFGS curvature pair and one influence update (two-loop recursion over 10 pairs plus the
    parameter update) against one gradient evaluation on the same batch (ratios);
(b) wall time per method on the demo world on this machine (the restoration itself, excluding the
    before/after evaluation), through ``compare``; runs are cached, so a repeat prints the stored
    times.

Run: .venv/bin/python bench/restoration.py [--skip-methods]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.timing import median_time  # noqa: E402
from core.base.progress import Progress, stderr_bar  # noqa: E402
from core.restoration.compare import compare  # noqa: E402
from core.restoration.data import restoration_data  # noqa: E402
from core.restoration.methods.curvature import (  # noqa: E402
    InfluenceConfig,
    LoraObjective,
    curvature_pairs,
    lbfgs_direction,
)
from core.world.demo import WorldConfig, build_world  # noqa: E402
from core.world.models import load_model, load_tokenizer  # noqa: E402


def pair_and_update_vs_gradient(world) -> dict:
    spec = world.finetuned_spec
    data = restoration_data(spec, world.config.seed)
    obj = LoraObjective(load_model(spec), load_tokenizer(spec), 16)
    config = InfluenceConfig(pairs=1)
    batch = data.curvature_retain[0][: config.pair_batch]
    radius = config.probe_radius * float(obj.get().norm())
    t_grad = median_time(lambda: obj.loss_and_grad(batch))
    t_pair = median_time(lambda: curvature_pairs(obj, {"retain-a": batch}, config, radius, Progress()))
    sets = {"retain-a": data.curvature_retain[0], "forget": data.curvature_forget, "retain-b": data.curvature_retain[1]}
    pairs = curvature_pairs(obj, sets, InfluenceConfig(pairs=10), radius, Progress()).pairs
    _, g = obj.loss_and_grad(batch)
    theta = obj.get()

    def update():
        obj.set(theta + 0.01 * lbfgs_direction(g, pairs, 1.0))

    t_update = median_time(update)
    obj.set(theta)
    return {
        "examples": len(batch),
        "gradient_s": t_grad,
        "pair_s": t_pair,
        "update_s": t_update,
        "pairs": len(pairs),
        "params": theta.numel(),
        "pair_ratio": t_pair / t_grad,
        "update_ratio": t_update / t_grad,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--skip-methods", action="store_true", help="only (a)")
    args = ap.parse_args()
    world = build_world(WorldConfig(), Progress(stderr_bar))
    a = pair_and_update_vs_gradient(world)
    print(
        f"(a) one L-BFGS pair {a['pair_s']:.2f}s = {a['pair_ratio']:.2f}x one gradient "
        f"({a['gradient_s']:.2f}s, {a['examples']} examples, {a['params']:,} LoRA params); "
        f"one influence update over {a['pairs']} pairs {a['update_s'] * 1000:.1f} ms = {a['update_ratio']:.4f}x"
    )
    out = {"a": a}
    if not args.skip_methods:
        pair = {"base": world.base_spec, "finetuned": world.finetuned_spec}
        result = compare(pair, world.config.seed, progress=Progress(stderr_bar))
        print("(b) wall time per method (restoration only, 2 CPU cores):")
        for row in result["table"][2:]:
            print(f"    {row['model']:<16} {row['wall_s']:7.1f} s")
        out["b"] = {row["model"]: row["wall_s"] for row in result["table"][2:]}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
