"""The command table of ``python -m core``: one subcommand per registered analysis
(``core.geometry.registry.ANALYSES``) plus the world, evaluation and restoration commands, each
option generated from the config dataclass that owns its default (``core.base.options``).

``execute`` parses and runs one command line; the terminal (``core.cli``) and the background-job
runner (``core.service.jobs``) both call it, so a page and a terminal run the very same code.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from typing import Any, Callable

import torch
from transformers.utils import logging as hf_logging

import core.geometry.analyses  # noqa: F401  (importing it registers every analysis)
from core.base.cache import clean_orphans
from core.base.errors import InputError
from core.base.options import add_arguments, argv_for, from_args, option
from core.base.progress import Progress, stderr_bar
from core.base.scaleout import ScaleOut, session
from core.base.scaleout import check as check_scaleout
from core.geometry.claims import RULES, claims_table
from core.geometry.registry import ANALYSES
from core.restoration.compare import compare
from core.restoration.data import DataConfig
from core.restoration.registry import METHODS, method, parse_config, settable
from core.restoration.runner import RunRequest, add_visage, restore
from core.restoration.store import runs_dir
from core.restoration.trajectory import TrajectoryConfig, trajectory_comparison
from core.service import answer_cache
from core.service.inputs import check_inputs
from core.service.inputs import params as _params
from core.service.warmup import cmd_warmup
from core.world.capability import CapabilityConfig, capability_of_pair
from core.world.capability import summary as capability_summary
from core.world.data import load_prompts_file
from core.world.demo import WorldConfig, build_world, with_intervals
from core.world.evaluation import EvalOptions, eval_config, summary
from core.world.judge import load_judge
from core.world.model_pair import ModelOptions, evaluate_pair, models_from_args, pair_from_args


@dataclass(frozen=True)
class RunFlags:
    """How a command runs and prints, not what it computes (never part of an answer's key)."""

    json: bool = option(False, "print one JSON object as the last line of stdout")
    threads: int = option(0, "torch CPU threads (0: all cores)", low=0)


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are one line ``error: ... Fix: ...`` with exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise InputError(f"{self.prog}: {message}.", f"see `{self.prog} --help`.")


def parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="python -m core", description="Safety-drift analysis engine.")
    sub = ap.add_subparsers(dest="command", required=True, parser_class=_Parser)
    w = _command(sub, "world", "build (if missing) and show the demo world", models=False)
    w.add_argument("--rebuild", action="store_true", help="rebuild even if cached")
    e = _command(sub, "evaluate", "harmful rate, prefill ASR, task exact-match, over-refusal")
    e.add_argument("--prompts-file", help="extra harmful prompts, one per line, reported separately")
    add_arguments(e, EvalOptions)
    e.add_argument("--show-examples", type=int, default=0, metavar="K", help="print K per-example outputs per set")
    for analysis in ANALYSES.values():
        a = _command(sub, analysis.name, analysis.help)
        for config in analysis.configs:
            add_arguments(a, config)
        for name in analysis.set_files:
            a.add_argument(
                f"--{name}-file", help=f"replace the {name} set with a .jsonl/.csv file (prompt, optional response)"
            )
    r = _command(sub, "restore", "restore safety: " + ", ".join(METHODS))
    r.add_argument("--method", required=True, help=", ".join(METHODS))
    r.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="method parameter, repeatable (e.g. epsilon=0.05)",
    )
    r.add_argument("--prompts-file", help="extra harmful prompts, one per line, reported before/after separately")
    r.add_argument("--visage", action="store_true", help="also the before/after VISAGE score (a basin run per model)")
    add_arguments(r, EvalOptions)
    add_arguments(r, DataConfig)
    cp = _command(sub, "compare", "every restoration method on the same world, seed and data: one table")
    cp.add_argument("--methods", default="", help="comma-separated subset (default: all that apply)")
    cp.add_argument("--prompts-file", help="extra harmful prompts, one per line, reported before/after separately")
    cp.add_argument("--visage", action="store_true", help="add a VISAGE column (a basin run per restored model)")
    add_arguments(cp, EvalOptions)
    add_arguments(cp, DataConfig)
    t = _command(sub, "trajectory", "PCA view of curvature-aware vs first-order optimizer paths (C.2)")
    add_arguments(t, TrajectoryConfig)
    cap = _command(sub, "capability", "general capability: ARC, BoolQ, PIQA, HellaSwag, Winogrande accuracy")
    add_arguments(cap, CapabilityConfig)
    _command(sub, "claims", "the papers' claims against this pair: each analysis at its defaults, with verdicts")
    m = sub.add_parser("methods", help="the restoration methods, their parameters and defaults")
    add_arguments(m, RunFlags)
    wu = sub.add_parser("warmup", help="each analysis of the default demo world at its quick preset, into the cache")
    add_arguments(wu, RunFlags)
    return ap


def _command(sub, name: str, help: str, models: bool = True) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=help)
    add_arguments(p, WorldConfig)
    add_arguments(p, RunFlags)
    if models:
        add_arguments(p, ModelOptions)
        add_arguments(p, ScaleOut)
    return p


def cmd_world(args: argparse.Namespace, progress: Progress) -> dict[str, Any]:
    config = from_args(WorldConfig, args)
    world = build_world(config, progress, args.rebuild)
    info = world.info
    return {
        "world": str(world.root),
        "base": str(world.root / "base"),
        "finetuned": str(world.root / "finetuned"),
        "seed": info["seed"],
        "harmful_examples": info["injected_harmful_examples"],
        "metrics": with_intervals(info["metrics"], config),
        "targets": info["targets"],
        "build_seconds": round(info["timings"]["total_s"], 1),
    }


def cmd_evaluate(args: argparse.Namespace, progress: Progress) -> dict[str, Any]:
    extra = load_prompts_file(args.prompts_file) if args.prompts_file else []
    options = from_args(EvalOptions, args)
    judge = load_judge(options.judge, options.judge_label)
    pair = models_from_args(args, progress)
    reports = evaluate_pair(pair, args.seed, extra, judge, progress, eval_config(options), options.capability_items)
    out: dict[str, Any] = {name: summary(r) for name, r in reports.items()}
    if args.show_examples:
        for name, r in reports.items():
            for key in ("harmful", "prefill", "task", "over_refusal"):
                for row in r[key]["examples"][: args.show_examples]:
                    print(f"[{name}/{key}] {row['prompt'][:80]!r} -> {row['response'][:120]!r}", file=sys.stderr)
    out["models"] = {name: spec.__dict__ for name, spec in pair.items()}
    return out


def _run_summary(record: dict) -> dict[str, Any]:
    keep = (
        "id",
        "method",
        "status",
        "config",
        "judge",
        "wall_s",
        "before",
        "after",
        "before_extra",
        "after_extra",
        "notes",
    )
    out = {k: record[k] for k in keep if k in record}
    out["steps"] = record["steps"]
    out["restored"] = str(runs_dir() / record["id"] / "restored")
    return out


def cmd_restore(args: argparse.Namespace, progress: Progress) -> dict[str, Any]:
    extra = load_prompts_file(args.prompts_file) if args.prompts_file else []
    m = method(args.method)
    config = parse_config(m, _params(args.param))
    options = from_args(EvalOptions, args)
    load_judge(options.judge, options.judge_label)  # a one-line error before any model loads
    request = RunRequest(
        m.name,
        config,
        args.seed,
        data=from_args(DataConfig, args),
        eval=eval_config(options),
        judge=options.judge,
        judge_label=options.judge_label,
        capability_items=options.capability_items,
    )
    record = restore(pair_from_args(args, progress), request, extra, progress)
    if args.visage:
        record = add_visage(record, args.seed, progress, options.judge, options.judge_label)
    return _run_summary(record)


def cmd_compare(args: argparse.Namespace, progress: Progress) -> dict[str, Any]:
    extra = load_prompts_file(args.prompts_file) if args.prompts_file else []
    methods = [m for m in args.methods.split(",") if m] or None
    options = from_args(EvalOptions, args)
    load_judge(options.judge, options.judge_label)  # a one-line error before any model loads
    pair, data = pair_from_args(args, progress), from_args(DataConfig, args)
    return compare(pair, args.seed, methods, extra, progress, args.visage, options, data)


def cmd_trajectory(args: argparse.Namespace, progress: Progress) -> dict[str, Any]:
    return trajectory_comparison(pair_from_args(args, progress), args.seed, from_args(TrajectoryConfig, args), progress)


def cmd_capability(args: argparse.Namespace, progress: Progress) -> dict[str, Any]:
    config = from_args(CapabilityConfig, args)
    pair = models_from_args(args, progress)
    results = capability_of_pair(pair, config, progress)
    out: dict[str, Any] = {name: capability_summary(r) for name, r in results.items()}
    out["config"] = {"tasks": list(config.tasks), "items": config.items}
    out["models"] = {name: spec.__dict__ for name, spec in pair.items()}
    return out


CLAIM_ANALYSES = ("correlate", "landscape", "basin", "curvature")


def cmd_claims(args: argparse.Namespace, progress: Progress) -> dict[str, Any]:
    """Each analysis of ``CLAIM_ANALYSES`` at its defaults on the chosen pair (cached answers
    return at once), then the claims table (``core.geometry.claims``)."""
    pair_argv = argv_for(WorldConfig, vars(args)) + argv_for(ModelOptions, vars(args))
    ap = parser()
    answers = {}
    for i, name in enumerate(CLAIM_ANALYSES):
        sub_args = ap.parse_args([name, *pair_argv])
        stage = progress.stage(i / len(CLAIM_ANALYSES), (i + 1) / len(CLAIM_ANALYSES))
        answers[name] = ANALYSES[name].command(sub_args, stage)
    rows = claims_table(answers, pair_argv)
    table = [{k: r[k] for k in ("verdict", "claim", "measured")} for r in rows]
    return {"table": table, "claims": rows, "rules": RULES, "answers": answers}


def cmd_methods(args: argparse.Namespace, progress: Progress) -> dict[str, Any]:
    return {
        name: {"summary": m.summary, "needs_adapter": m.needs_adapter, "params": settable(m.config())}
        for name, m in METHODS.items()
    }


COMMANDS: dict[str, Callable[[argparse.Namespace, Progress], dict[str, Any]]] = {
    "world": cmd_world,
    "evaluate": cmd_evaluate,
    **{name: a.command for name, a in ANALYSES.items()},
    "restore": cmd_restore,
    "compare": cmd_compare,
    "trajectory": cmd_trajectory,
    "capability": cmd_capability,
    "claims": cmd_claims,
    "methods": cmd_methods,
    "warmup": lambda args, progress: cmd_warmup(args, progress, execute),
}


def execute(
    argv: list[str], callback: Callable | None = stderr_bar, cancel: Any = None, cached_answers: bool = True
) -> dict[str, Any]:
    """Parse and run one command, returning its answer; raises InputError or Cancelled.

    With ``cached_answers`` a repeated command line is answered from (and a new answer stored
    in) the answer cache (``core.service.answer_cache``); in-process callers such as tests skip it.
    """
    args = parser().parse_args(argv)
    scale = from_args(ScaleOut, args)
    check_scaleout(scale.workers, scale.ray_address)  # a missing Ray is a one-line error before any model loads
    check_inputs(args)  # every file, model, judge and method named, before any work
    clean_orphans()  # temporaries of killed builds; cheap globs
    key = answer_cache.answer_key(argv) if cached_answers else None
    result = answer_cache.lookup(key)
    if result is None:
        hf_logging.disable_progress_bar()  # our own bar is the only progress on stderr
        hf_logging.set_verbosity_error()
        if args.threads:
            torch.set_num_threads(args.threads)
        with session(scale.workers, scale.ray_address, args.threads):
            result = COMMANDS[args.command](args, Progress(callback, cancel))
        answer_cache.store(
            answer_cache.answer_key(argv) if cached_answers else None, result
        )  # keyed after the run: it may have built a world
    return result
