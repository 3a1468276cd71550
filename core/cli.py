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
    p.add_argument("--prompts-file", help="extra harmful prompts, one per line, reported separately")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    p.add_argument("--dtype", default="auto", help="auto (bf16 on GPU, fp32 on CPU), float32, bfloat16, float16")
    p.add_argument("--trust-remote-code", action="store_true", help="allow model code from the checkpoint (off by default)")
    p.add_argument("--judge", help="harmfulness judge as module:function taking (prompts, responses) -> list[bool]")


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m core", description="Safety-drift analysis engine.")
    sub = ap.add_subparsers(dest="command", required=True)
    w = sub.add_parser("world", help="build (if missing) and show the demo world")
    _world_args(w)
    w.add_argument("--rebuild", action="store_true", help="rebuild even if cached")
    e = sub.add_parser("evaluate", help="harmful rate, prefill ASR, task exact-match, over-refusal")
    _world_args(e)
    _model_args(e)
    e.add_argument("--show-examples", type=int, default=0, metavar="K", help="print K per-example outputs per set")
    return ap


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


COMMANDS = {"world": cmd_world, "evaluate": cmd_evaluate}


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
