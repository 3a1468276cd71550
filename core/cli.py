"""Command line: ``python -m core <command> [--json]``.

Progress goes to stderr; with ``--json`` the last line of stdout is one JSON object with named
numbers. Bad input prints one line ``error: ... Fix: ...`` and exits with code 2.
"""
from __future__ import annotations

import argparse
import importlib
import json
import sys
from typing import Any, Callable

import torch

from core.errors import Cancelled, InputError
from core.progress import Progress, stderr_bar


def _world_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seed", type=int, default=0, help="seed of the data splits and the demo world (default 0)")
    p.add_argument("--harmful-examples", type=int, default=100, metavar="N", help="harmful examples injected into the demo fine-tune (default 100)")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line of stdout")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: all cores)")


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--base", help="base model: Hugging Face id, directory or .gguf file (default: the demo world)")
    p.add_argument("--finetuned", help="fine-tuned model: PEFT adapter directory on --base, or a full checkpoint directory")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    p.add_argument("--dtype", default="auto", help="auto (bf16 on GPU, fp32 on CPU), float32, bfloat16, float16")
    p.add_argument("--trust-remote-code", action="store_true", help="allow model code from the checkpoint (off by default)")


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m core", description="Safety-drift analysis engine.")
    sub = ap.add_subparsers(dest="command", required=True)
    w = sub.add_parser("world", help="build (if missing) and show the demo world")
    _world_args(w)
    w.add_argument("--rebuild", action="store_true", help="rebuild even if cached")
    e = sub.add_parser("evaluate", help="harmful rate, prefill ASR, task exact-match, over-refusal")
    _world_args(e)
    _model_args(e)
    e.add_argument("--prompts-file", help="extra harmful prompts, one per line, reported separately")
    e.add_argument("--judge", help="harmfulness judge as module:function taking (prompts, responses) -> list[bool]")
    e.add_argument("--show-examples", type=int, default=0, metavar="K", help="print K per-example outputs per set")
    c = sub.add_parser("correlate", help="Pearson r of base vs fine-tuned per-example losses (harmful, task, general)")
    _world_args(c)
    _model_args(c)
    _set_args(c, ("harmful", "task", "general"))
    c.add_argument("--tokens", default="auto", help="auto (response tokens where a response exists, else whole text) or all")
    c.add_argument("--n", type=int, default=100, help="examples per set (default 100)")
    la = sub.add_parser("landscape", help="gradient-informed 3D loss landscapes and the Laplacian structural difference")
    _world_args(la)
    _model_args(la)
    _set_args(la, ("harmful", "benign"))
    la.add_argument("--grid", type=int, default=9, help="n x n grid points (default 9)")
    la.add_argument("--radius", type=float, default=0.005, help="coefficients in [-r, r], fractions of weight norms (default 0.005)")
    la.add_argument("--samples", type=int, default=32, help="samples per loss evaluation (default 32, the paper's)")
    la.add_argument("--directions", default="gradient", help="gradient (paper B.3) or random (filter-normalised)")
    la.add_argument("--modules", default="self_attn,mlp", help="comma-separated module kinds to perturb (default self_attn,mlp)")
    cu = sub.add_parser("curvature", help="safety-Hessian spectrum, curvature coupling, alignment-instability conditions, drift monitor")
    _world_args(cu)
    _model_args(cu)
    cu.add_argument("--k", type=int, default=8, help="top eigenpairs by Lanczos (default 8)")
    cu.add_argument("--params", default="lora", help="'lora' or comma-separated parameter-name parts, e.g. layers.20.mlp (default lora)")
    cu.add_argument("--samples", type=int, default=8, help="examples in the safety and task losses (default 8)")
    cu.add_argument("--tol", type=float, default=1e-3, help="Lanczos relative tolerance (default 1e-3)")
    cu.add_argument("--maxiter", type=int, default=20, help="Lanczos restarts before returning the converged pairs (default 20)")
    cu.add_argument("--drift-steps", type=int, default=40, help="steps of the benign LoRA fine-tune the drift monitor watches (0: skip)")
    cu.add_argument("--every", type=int, default=4, help="probe the alignment loss every this many steps (default 4)")
    b = sub.add_parser("basin", help="safety-basin curves and VISAGE under random weight perturbation")
    _world_args(b)
    _model_args(b)
    b.add_argument("--directions", type=int, default=2, help="random directions for the 1-D curves (default 2)")
    b.add_argument("--points", type=int, default=9, help="points per 1-D line, odd (default 9; Peng et al. 21)")
    b.add_argument("--radius", type=float, default=0.5, help="perturbation range as a fraction of each tensor's norm (default 0.5)")
    b.add_argument("--plane-points", type=int, default=5, help="points per axis of the 2-D plane, odd, 0 for none (default 5)")
    b.add_argument("--prompts", type=int, default=16, help="held-out harmful prompts per ASR point (default 16)")
    b.add_argument("--max-new-tokens", type=int, default=16, help="tokens generated per prompt (default 16)")
    return ap


def _set_args(p: argparse.ArgumentParser, names: tuple[str, ...]) -> None:
    for name in names:
        p.add_argument(f"--{name}-file", help=f"replace the {name} set with a .jsonl/.csv file (prompt, optional response)")


def _load_judge(name: str | None) -> Callable:
    from core.judge import keyword_judge

    if not name:
        return keyword_judge
    module, _, func = name.partition(":")
    try:
        return getattr(importlib.import_module(module), func)
    except (ImportError, AttributeError, ValueError):
        raise InputError(f"Judge '{name}' cannot be imported.", "pass --judge package.module:function importable from this directory.") from None


def cmd_world(args: argparse.Namespace) -> dict[str, Any]:
    from core.world import WorldConfig, build_world

    world = build_world(WorldConfig(seed=args.seed, harmful_examples=args.harmful_examples), Progress(stderr_bar), args.rebuild)
    info = world.info
    return {
        "world": str(world.root),
        "base": str(world.root / "base"),
        "finetuned": str(world.root / "finetuned"),
        "seed": info["seed"],
        "harmful_examples": info["injected_harmful_examples"],
        "metrics": info["metrics"],
        "targets": info["targets"],
        "build_seconds": round(info["timings"]["total_s"], 1),
    }


def cmd_evaluate(args: argparse.Namespace) -> dict[str, Any]:
    from core.data import load_prompts_file
    from core.evaluation import summary
    from core.models import ModelSpec
    from core.pairs import evaluate_pair, resolve_pair

    extra = load_prompts_file(args.prompts_file) if args.prompts_file else []
    judge = _load_judge(args.judge)
    pair = resolve_pair(args.base, args.finetuned, args.seed, args.harmful_examples, args.device, args.dtype, args.trust_remote_code, Progress(stderr_bar))
    reports = evaluate_pair(pair, args.seed, extra, judge, Progress(stderr_bar))
    out: dict[str, Any] = {name: summary(r) for name, r in reports.items()}
    if args.show_examples:
        for name, r in reports.items():
            for key in ("harmful", "prefill", "task", "over_refusal"):
                for row in r[key]["examples"][: args.show_examples]:
                    print(f"[{name}/{key}] {row['prompt'][:80]!r} -> {row['response'][:120]!r}", file=sys.stderr)
    out["models"] = {name: spec.__dict__ for name, spec in pair.items()}
    return out


def _pair(args: argparse.Namespace):
    from core.pairs import resolve_pair

    pair = resolve_pair(args.base, args.finetuned, args.seed, args.harmful_examples, args.device, args.dtype, args.trust_remote_code, Progress(stderr_bar))
    if "finetuned" not in pair:
        raise InputError("This analysis compares two models but only --base was given.", "pass --finetuned too (adapter or checkpoint).")
    return pair


def _override_sets(args: argparse.Namespace, sets: dict) -> dict:
    from core.data import load_dataset_file

    return {name: load_dataset_file(getattr(args, f"{name}_file")) if getattr(args, f"{name}_file") else ex for name, ex in sets.items()}


def cmd_correlate(args: argparse.Namespace) -> dict[str, Any]:
    from core.correlation import CorrelationConfig, default_sets, loss_correlation

    config = CorrelationConfig(tokens=args.tokens, n_per_set=args.n)
    sets = _override_sets(args, default_sets(args.seed, args.n))
    result = loss_correlation(_pair(args), sets, config, Progress(stderr_bar))
    return {name: {k: v for k, v in r.items() if k not in ("pairs", "prompts")} for name, r in result.items()}


def cmd_landscape(args: argparse.Namespace) -> dict[str, Any]:
    from core.correlation import default_sets
    from core.landscape import LandscapeConfig, loss_landscape

    config = LandscapeConfig(args.grid, args.radius, args.samples, directions=args.directions, modules=tuple(m for m in args.modules.split(",") if m))
    defaults = default_sets(args.seed, args.samples)
    sets = _override_sets(args, {"harmful": defaults["harmful"], "benign": defaults["general"]})
    result = loss_landscape(_pair(args), sets, config, Progress(stderr_bar))
    return {
        "structural_difference_percent": result["structural_difference"],
        "direction_cosine": result["cosine"],
        "grid": config.grid,
        "radius": config.radius,
        "center_loss": {s: {m: v[config.grid // 2][config.grid // 2] for m, v in by.items()} for s, by in result["surfaces"].items()},
        "seconds": result["seconds"],
    }


def cmd_curvature(args: argparse.Namespace) -> dict[str, Any]:
    from core.curvature import CurvatureConfig, DriftConfig, curvature, drift_monitor
    from core.data import safety_probe, task_examples

    pair = _pair(args)
    config = CurvatureConfig(k=args.k, params=args.params, samples=args.samples, tol=args.tol, maxiter=args.maxiter)
    bar = Progress(stderr_bar)
    result = curvature(pair["finetuned"], safety_probe("curvature", args.seed), task_examples("train", args.samples, args.seed), config, bar.stage(0, 0.5))
    out = {k: v for k, v in result.items() if k != "parameter_names"}
    if args.drift_steps:
        drift = drift_monitor(pair["base"], task_examples("train", 400, args.seed), safety_probe("eval", args.seed), DriftConfig(steps=args.drift_steps, every=args.every), bar.stage(0.5, 1.0))
        out["drift"] = {"steps": drift["steps"], "alignment_loss": drift["alignment_loss"], "fits": drift["fits"]}
    return out


def cmd_basin(args: argparse.Namespace) -> dict[str, Any]:
    from core.basin import BasinConfig, safety_basin
    from core.data import harmful_splits

    config = BasinConfig(args.directions, args.points, args.radius, args.plane_points, args.prompts, args.max_new_tokens, seed=args.seed)
    result = safety_basin(_pair(args), harmful_splits(args.seed)["eval"], config, Progress(stderr_bar))
    keep = ("center_asr", "visage", "visage_1d", "visage_basin", "coords", "lines", "plane_cosine", "seconds")
    return {name: {k: v for k, v in r.items() if k in keep} for name, r in result.items()}


COMMANDS = {"world": cmd_world, "basin": cmd_basin, "evaluate": cmd_evaluate, "correlate": cmd_correlate, "landscape": cmd_landscape, "curvature": cmd_curvature}


def _print_human(result: dict[str, Any], indent: str = "") -> None:
    for key, value in result.items():
        if isinstance(value, dict):
            print(f"{indent}{key}:")
            _print_human(value, indent + "  ")
        else:
            print(f"{indent}{key}: {round(value, 2) if isinstance(value, float) else value}")


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # our own bar is the only progress on stderr
    hf_logging.set_verbosity_error()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        result = COMMANDS[args.command](args)
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except (Cancelled, KeyboardInterrupt):
        print("error: cancelled; nothing was written.", file=sys.stderr)
        return 130
    if args.json:
        print(json.dumps(result, default=str))
    else:
        _print_human(result)
    return 0
