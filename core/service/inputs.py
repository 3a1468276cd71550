"""Validate before work: every input of a parsed command line that can be checked without loading
a model or building the demo world, checked before anything runs (``commands.execute`` calls
``check_inputs`` first). Option bounds and choices are the parser's (``core.base.options``); this
adds files, models, judges, capability tasks and restoration methods, each a one-line
``InputError`` naming the input and a fix."""

from __future__ import annotations

import argparse
import inspect
from pathlib import Path

from core.base.errors import InputError
from core.base.options import from_args
from core.base.scaleout import ScaleOut
from core.geometry.landscape import check_memory_for_workers
from core.restoration.registry import method, parse_config
from core.world.capability import CapabilityConfig, check_config
from core.world.data import load_dataset_file, load_prompts_file
from core.world.judge import FUNCTION, load_judge
from core.world.model_files import check_model_files
from core.world.model_pair import models_from_args
from core.world.models import validate


def check_inputs(args: argparse.Namespace) -> None:
    """Raise ``InputError`` for the first bad input of ``args`` (cheap: no weights are read)."""
    if getattr(args, "prompts_file", None):
        load_prompts_file(args.prompts_file)
    for name, value in sorted(vars(args).items()):
        if name.endswith("_file") and name != "prompts_file" and value:
            load_dataset_file(value)
    if args.command == "capability":
        check_config(from_args(CapabilityConfig, args))
    if args.command == "landscape":
        scale = from_args(ScaleOut, args)
        check_memory_for_workers(args.direction_memory, scale.workers > 1 or bool(scale.ray_address))
    if args.command == "restore":
        parse_config(method(args.method), params(args.param))
    if args.command == "compare":
        for name in filter(None, args.methods.split(",")):
            method(name.strip())
    if getattr(args, "judge", None):
        check_judge(args.judge, getattr(args, "judge_label", ""))
    if getattr(args, "base", None) is not None:
        check_model_files(args.base, getattr(args, "finetuned", None))
        for spec in models_from_args(args).values():  # with --base no world is built
            validate(spec)  # tokenizer, chat template and adapter fit, on a meta skeleton


def params(items: list[str]) -> dict[str, str]:
    """``--param KEY=VALUE`` items as a dict."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise InputError(f"--param '{item}' is not KEY=VALUE.", "write it like --param epsilon=0.05.")
        out[key.strip()] = value.strip()
    return out


def check_judge(name: str, label: str = "") -> None:
    """A ``module:function`` judge imports and takes (prompts, responses); a model judge is
    checked when it loads (it reads weights)."""
    if not (FUNCTION.match(name) and not Path(name).exists()):
        return
    judge = load_judge(name, label)
    if not callable(judge):
        raise InputError(f"Judge '{name}' is not a function.", "pass --judge module:function, a callable.")
    try:
        inspect.signature(judge).bind(["prompt"], ["response"])
    except TypeError:
        raise InputError(
            f"Judge '{name}' does not take (prompts, responses).",
            "give it the signature judge(prompts: list[str], responses: list[str]) -> list[bool].",
        ) from None
    except ValueError:  # a builtin without a signature: it is called as is
        pass
