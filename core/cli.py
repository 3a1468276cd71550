"""Command line: ``python -m core <command> [--json]``.

Progress goes to stderr; with ``--json`` the last line of stdout is one JSON object with named
numbers. Bad input prints one line ``error: ... Fix: ...`` and exits with code 2.
"""
from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path
from typing import Any, Callable

from core import answers
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
    r = sub.add_parser("restore", help="restore safety: curvature, direction, gradient-ascent, resta, safelora, interpolate")
    _world_args(r)
    _model_args(r)
    r.add_argument("--method", required=True, help="curvature, direction, gradient-ascent, resta, safelora or interpolate")
    r.add_argument("--param", action="append", default=[], metavar="KEY=VALUE", help="method parameter, repeatable (e.g. epsilon=0.05, rate_percent=0.2)")
    r.add_argument("--prompts-file", help="extra harmful prompts, one per line, reported before/after separately")
    r.add_argument("--visage", action="store_true", help="also the before/after VISAGE score (a basin run per model, ~3 min each on 2 cores)")
    cp = sub.add_parser("compare", help="every restoration method on the same world, seed and data: one table")
    _world_args(cp)
    _model_args(cp)
    cp.add_argument("--methods", default="", help="comma-separated subset (default: all that apply)")
    cp.add_argument("--prompts-file", help="extra harmful prompts, one per line, reported before/after separately")
    cp.add_argument("--visage", action="store_true", help="add a VISAGE column (a basin run per restored model)")
    t = sub.add_parser("trajectory", help="PCA view of curvature-aware vs first-order optimizer paths (paper 1, C.2)")
    _world_args(t)
    _model_args(t)
    t.add_argument("--lrs", default="0.01,0.05", help="learning rates (default 0.01,0.05)")
    t.add_argument("--iterations", type=int, default=5, help="steps per run (default 5)")
    t.add_argument("--grid", type=int, default=7, help="contour points per axis (default 7)")
    m = sub.add_parser("methods", help="the restoration methods, their parameters and defaults")
    m.add_argument("--json", action="store_true", help="print one JSON object as the last line of stdout")
    m.add_argument("--threads", type=int, default=0, help=argparse.SUPPRESS)
    return ap


def _set_args(p: argparse.ArgumentParser, names: tuple[str, ...]) -> None:
    for name in names:
        p.add_argument(f"--{name}-file", help=f"replace the {name} set with a .jsonl/.csv file (prompt, optional response)")


def _bar(args: argparse.Namespace) -> Progress:
    """The progress of this invocation: a stderr bar on the CLI, a state file in a background job."""
    return Progress(getattr(args, "progress_callback", stderr_bar), getattr(args, "cancel", None))


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

    world = build_world(WorldConfig(seed=args.seed, harmful_examples=args.harmful_examples), _bar(args), args.rebuild)
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
    pair = resolve_pair(args.base, args.finetuned, args.seed, args.harmful_examples, args.device, args.dtype, args.trust_remote_code, _bar(args))
    reports = evaluate_pair(pair, args.seed, extra, judge, _bar(args))
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

    pair = resolve_pair(args.base, args.finetuned, args.seed, args.harmful_examples, args.device, args.dtype, args.trust_remote_code, _bar(args))
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
    result = loss_correlation(_pair(args), sets, config, _bar(args))
    return {name: {**r, "prompts": [p[:100] for p in r["prompts"]]} for name, r in result.items()}


def cmd_landscape(args: argparse.Namespace) -> dict[str, Any]:
    from core.correlation import default_sets
    from core.landscape import LandscapeConfig, loss_landscape

    config = LandscapeConfig(args.grid, args.radius, args.samples, directions=args.directions, modules=tuple(m for m in args.modules.split(",") if m))
    defaults = default_sets(args.seed, args.samples)
    sets = _override_sets(args, {"harmful": defaults["harmful"], "benign": defaults["general"]})
    result = loss_landscape(_pair(args), sets, config, _bar(args))
    center = {s: {m: v[config.grid // 2][config.grid // 2] for m, v in by.items()} for s, by in result["surfaces"].items()}
    return {**result, "grid": config.grid, "radius": config.radius, "center_loss": center}


def cmd_curvature(args: argparse.Namespace) -> dict[str, Any]:
    from core.curvature import CurvatureConfig, DriftConfig, curvature, drift_monitor
    from core.data import safety_probe, task_examples

    pair = _pair(args)
    config = CurvatureConfig(k=args.k, params=args.params, samples=args.samples, tol=args.tol, maxiter=args.maxiter)
    bar = _bar(args)
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
    result = safety_basin(_pair(args), harmful_splits(args.seed)["eval"], config, _bar(args))
    keep = ("center_asr", "visage", "visage_1d", "visage_basin", "coords", "lines", "plane_coords", "plane", "plane_cosine", "seconds")
    return {name: {k: v for k, v in r.items() if k in keep} for name, r in result.items()}


def _params(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise InputError(f"--param '{item}' is not KEY=VALUE.", "write it like --param epsilon=0.05.")
        out[key.strip()] = value.strip()
    return out


def _run_summary(record: dict) -> dict[str, Any]:
    keep = ("id", "method", "status", "config", "wall_s", "before", "after", "before_extra", "after_extra", "notes")
    out = {k: record[k] for k in keep if k in record}
    out["steps"] = record["steps"]
    out["restored"] = str(Path(record["id"]))
    return out


def cmd_restore(args: argparse.Namespace) -> dict[str, Any]:
    from core.data import load_prompts_file
    from core.restore import RunRequest, add_visage, method, parse_config, restore, runs_dir

    extra = load_prompts_file(args.prompts_file) if args.prompts_file else []
    m = method(args.method)
    config = parse_config(m, _params(args.param))
    record = restore(_pair(args), RunRequest(m.name, config, args.seed), extra, _bar(args))
    if args.visage:
        record = add_visage(record, args.seed, _bar(args))
    out = _run_summary(record)
    out["restored"] = str(runs_dir() / record["id"] / "restored")
    return out


def cmd_compare(args: argparse.Namespace) -> dict[str, Any]:
    from core.data import load_prompts_file
    from core.restore import compare

    extra = load_prompts_file(args.prompts_file) if args.prompts_file else []
    methods = [m for m in args.methods.split(",") if m] or None
    return compare(_pair(args), args.seed, methods, extra, _bar(args), visage=args.visage)


def cmd_trajectory(args: argparse.Namespace) -> dict[str, Any]:
    from core.trajectory import TrajectoryConfig, trajectory_comparison

    try:
        lrs = tuple(float(x) for x in args.lrs.split(","))
    except ValueError:
        raise InputError(f"--lrs '{args.lrs}' is not a comma-separated list of numbers.", "write it like --lrs 0.01,0.05.") from None
    config = TrajectoryConfig(lrs=lrs, iterations=args.iterations, grid=args.grid)
    return trajectory_comparison(_pair(args), args.seed, config, _bar(args))


def cmd_methods(args: argparse.Namespace) -> dict[str, Any]:
    from dataclasses import fields, is_dataclass

    from core.restore import METHODS, method

    method("curvature")  # registers every method

    def settable(config) -> dict[str, Any]:
        return {f.name: getattr(config, f.name) for f in fields(config) if not is_dataclass(getattr(config, f.name))}

    return {name: {"summary": m.summary, "needs_adapter": m.needs_adapter, "params": settable(m.config())} for name, m in METHODS.items()}


COMMANDS = {"world": cmd_world, "basin": cmd_basin, "evaluate": cmd_evaluate, "correlate": cmd_correlate, "landscape": cmd_landscape, "curvature": cmd_curvature,
            "restore": cmd_restore, "compare": cmd_compare, "trajectory": cmd_trajectory, "methods": cmd_methods}


def _print_human(result: dict[str, Any], indent: str = "") -> None:
    """Nested scalars as indented lines; long lists (figure data) are left to --json."""
    for key, value in result.items():
        if isinstance(value, list) and len(value) > 8:
            continue
        if isinstance(value, dict):
            print(f"{indent}{key}:")
            _print_human(value, indent + "  ")
        else:
            print(f"{indent}{key}: {round(value, 2) if isinstance(value, float) else value}")


def execute(argv: list[str], callback: Callable | None = stderr_bar, cancel: Any = None, cached_answers: bool = True) -> dict[str, Any]:
    """Parse and run one command, returning its answer; raises InputError or Cancelled.

    The background-job runner (``core.jobs``) calls this with its own progress callback and
    cancel flag; ``main`` wraps it for the terminal.
    """
    args = parser().parse_args(argv)
    args.progress_callback, args.cancel = callback, cancel
    result = answers.lookup(answers.answer_key(args)) if cached_answers else None
    if result is None:
        result = _compute(args)
        if cached_answers:
            answers.store(answers.answer_key(args), result)  # keyed after the run: it may have built a world
    return result


def main(argv: list[str] | None = None, cached_answers: bool = False) -> int:
    """Run one command; ``cached_answers`` (set by ``python -m core``) answers a repeated command
    line from the answer cache before importing torch (see ``core.answers``)."""
    argv = sys.argv[1:] if argv is None else argv
    args = parser().parse_args(argv)
    try:
        result = execute(argv, cached_answers=cached_answers)
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except (Cancelled, KeyboardInterrupt):
        print("error: cancelled; nothing was written.", file=sys.stderr)
        return 130
    if args.json:
        print(json.dumps(result, default=str))
    elif "table" in result:
        _print_table(result["table"])
    else:
        _print_human(result)
    return 0


def _print_table(rows: list[dict[str, Any]]) -> None:
    cols = list(rows[0])
    cells = [[f"{r[c]:.1f}" if isinstance(r[c], float) else str(r[c]) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    print("  ".join(c.ljust(w) for c, w in zip(cols, widths)))
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)))


def _compute(args: argparse.Namespace) -> dict[str, Any]:
    """Run one command with torch set up (imported here so cached answers skip it)."""
    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # our own bar is the only progress on stderr
    hf_logging.set_verbosity_error()
    if args.threads:
        torch.set_num_threads(args.threads)
    return COMMANDS[args.command](args)
