"""The model pair every analysis runs on: the demo world by default, or a user's base and
fine-tuned model. One place turns CLI/dashboard options into ``ModelSpec``s."""

from __future__ import annotations

from dataclasses import dataclass, replace

from core.base.errors import InputError
from core.base.options import option
from core.base.progress import Progress
from core.world.data import Example
from core.world.demo import WorldConfig, build_world, eval_sets
from core.world.evaluation import EvalConfig, evaluate_model, with_capability
from core.world.judge import Judge, keyword_judge
from core.world.models import (
    ModelSpec,
    finetuned_path,
    fingerprint,
    load_model,
    load_tokenizer,
    planned_offload,
    validate,
)
from core.world.placement import DEVICE_MAPS, check_device_map, refuse_offloaded

DTYPES = ("auto", "float32", "bfloat16", "float16")


@dataclass(frozen=True)
class ModelOptions:
    """Which models a command runs on (without ``base``: the demo world) and how they load."""

    base: str | None = option(None, "base model: Hugging Face id, directory or .gguf file (default: the demo world)")
    finetuned: str | None = option(
        None, "fine-tuned model: PEFT adapter on --base or a full checkpoint, as a directory or Hugging Face id"
    )
    revision: str | None = option(None, "hub branch, tag or commit of --base (default: main)")
    finetuned_revision: str | None = option(None, "hub branch, tag or commit of --finetuned (default: main)")
    device: str = option("auto", "auto, cpu, cuda, cuda:N or mps")
    dtype: str = option("auto", "auto (bf16 on GPU, fp32 on CPU), float32, bfloat16 or float16", choices=DTYPES)
    trust_remote_code: bool = option(False, "allow model code from the checkpoint (off by default)")
    device_map: str = option(
        "none",
        "none (the model on one device) or auto (accelerate places it over GPUs, CPU and disk; "
        "chosen by itself when the weights do not fit the GPU)",
        choices=DEVICE_MAPS,
    )
    max_memory: str | None = option(None, "with --device-map auto: memory per device, e.g. 0=20GiB,cpu=60GiB")


def resolve_pair(
    base: str | None,
    finetuned: str | None,
    seed: int = 0,
    harmful_examples: int = 100,
    device: str = "auto",
    dtype: str = "auto",
    trust_remote_code: bool = False,
    progress: Progress | None = None,
    revision: str | None = None,
    finetuned_revision: str | None = None,
    device_map: str = "none",
    max_memory: str | None = None,
) -> dict[str, ModelSpec]:
    """``{"base": spec, "finetuned": spec}``; without ``base``, the demo world (built if missing).
    A hub id for the fine-tune becomes its snapshot folder (adapter checks read files)."""
    check_device_map(device_map, max_memory)
    if base is None:
        if finetuned is not None:
            raise InputError(
                "--finetuned was given without --base.", "pass the base model the fine-tune came from with --base."
            )
        world = build_world(WorldConfig(seed=seed, harmful_examples=harmful_examples), progress)
        specs = {"base": world.base_spec, "finetuned": world.finetuned_spec}
    else:
        specs = {"base": ModelSpec(base, None, device, dtype, trust_remote_code, revision)}
        if finetuned is not None:
            spec = ModelSpec(base, finetuned, device, dtype, trust_remote_code, revision, finetuned_revision)
            specs["finetuned"] = replace(spec, finetuned=str(finetuned_path(spec)), finetuned_revision=None)
    how = dict(device=device, dtype=dtype, trust_remote_code=trust_remote_code, device_map=device_map)
    return {k: replace(v, **how, max_memory=max_memory) for k, v in specs.items()}


def evaluate_pair(
    pair: dict[str, ModelSpec],
    seed: int = 0,
    extra: list[Example] | None = None,
    judge: Judge = keyword_judge,
    progress: Progress | None = None,
    config: EvalConfig = EvalConfig(),
    capability_items: int = 0,
) -> dict[str, dict]:
    """Full held-out evaluation of each model of the pair (cached per model fingerprint), with general
    capability on ``capability_items`` per task when positive."""
    progress = progress or Progress()
    for spec in pair.values():
        validate(spec)
    sets = eval_sets(seed, extra=extra)
    reports = {}
    for i, (name, spec) in enumerate(pair.items()):
        stage = progress.stage(i / len(pair), (i + 1) / len(pair))
        tokenizer = load_tokenizer(spec)
        model = load_model(spec)
        fp = fingerprint(spec)
        report = evaluate_model(
            model, tokenizer, sets, fp, config, judge, stage.stage(0, 0.6 if capability_items else 1)
        )
        reports[name] = with_capability(report, model, tokenizer, fp, capability_items, stage.stage(0.6, 1.0))
    return reports


def models_from_args(args, progress: Progress | None = None) -> dict[str, ModelSpec]:
    """The models parsed CLI options name (``ModelOptions`` and ``WorldChoice`` fields): the base,
    and the fine-tune when there is one. A command that edits weights refuses, before any work, a
    placement that would offload them."""
    pair = resolve_pair(
        args.base,
        args.finetuned,
        args.seed,
        args.harmful_examples,
        args.device,
        args.dtype,
        args.trust_remote_code,
        progress,
        getattr(args, "revision", None),
        getattr(args, "finetuned_revision", None),
        getattr(args, "device_map", "none"),
        getattr(args, "max_memory", None),
    )
    for spec in pair.values():
        refuse_offloaded(getattr(args, "command", ""), planned_offload(spec))
    return pair


def pair_from_args(args, progress: Progress | None = None) -> dict[str, ModelSpec]:
    """The two-model pair of parsed CLI options; a one-line error when only a base is named."""
    pair = models_from_args(args, progress)
    if "finetuned" not in pair:
        raise InputError(
            "This analysis compares two models but only --base was given.",
            "pass --finetuned too (adapter or checkpoint).",
        )
    return pair
