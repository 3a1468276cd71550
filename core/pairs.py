"""The model pair every analysis runs on: the demo world by default, or a user's base and
fine-tuned model. One place turns CLI/dashboard options into ``ModelSpec``s."""
from __future__ import annotations

from dataclasses import replace

from core.data import Example
from core.errors import InputError
from core.evaluation import evaluate_model
from core.judge import Judge, keyword_judge
from core.models import ModelSpec, fingerprint, load_model, load_tokenizer, validate
from core.progress import Progress


def resolve_pair(
    base: str | None,
    finetuned: str | None,
    seed: int = 0,
    harmful_examples: int = 100,
    device: str = "auto",
    dtype: str = "auto",
    trust_remote_code: bool = False,
    progress: Progress | None = None,
) -> dict[str, ModelSpec]:
    """``{"base": spec, "finetuned": spec}``; without ``base``, the demo world (built if missing)."""
    if base is None:
        if finetuned is not None:
            raise InputError("--finetuned was given without --base.", "pass the base model the fine-tune came from with --base.")
        from core.world import WorldConfig, build_world

        world = build_world(WorldConfig(seed=seed, harmful_examples=harmful_examples), progress)
        specs = {"base": world.base_spec, "finetuned": world.finetuned_spec}
    else:
        specs = {"base": ModelSpec(base, None, device, dtype, trust_remote_code)}
        if finetuned is not None:
            specs["finetuned"] = ModelSpec(base, finetuned, device, dtype, trust_remote_code)
    return {k: replace(v, device=device, dtype=dtype, trust_remote_code=trust_remote_code) for k, v in specs.items()}


def evaluate_pair(
    pair: dict[str, ModelSpec],
    seed: int = 0,
    extra: list[Example] | None = None,
    judge: Judge = keyword_judge,
    progress: Progress | None = None,
) -> dict[str, dict]:
    """Full held-out evaluation of each model of the pair (cached per model fingerprint)."""
    from core.world import eval_sets

    progress = progress or Progress()
    for spec in pair.values():
        validate(spec)
    sets = eval_sets(seed, extra=extra)
    reports = {}
    for i, (name, spec) in enumerate(pair.items()):
        stage = progress.stage(i / len(pair), (i + 1) / len(pair))
        tokenizer = load_tokenizer(spec)
        model = load_model(spec)
        reports[name] = evaluate_model(model, tokenizer, sets, fingerprint(spec), judge=judge, progress=stage)
    return reports
