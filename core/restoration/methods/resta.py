"""``resta`` (Bhardwaj et al. 2024, "Language Models are Homer Simpson! Safety Re-Alignment of
Fine-tuned Language Models through Task Arithmetic"): the safety vector v = theta_base -
theta_unaligned (theta_unaligned: the aligned base fine-tuned on harmful compliance data), added to
the fine-tune: restored = theta_base + DARE(theta_ft - theta_base) + scale * v. DARE (drop each
entry of the fine-tuning delta with probability p, rescale the rest by 1 / (1 - p), seeded by the
run) acts on the fine-tuning delta, as RESTA applies it to the SFT model's delta parameters; p = 0
(the default) leaves the fine-tune as it is. The result is a full model (an adapter is merged first).

The scale. RESTA's scale 1 on a 135M model refuses almost everything (79% over-refusal measured),
so ``scale = 0`` (the default) chooses it by a rule fixed in advance, on data no evaluation uses:
the smallest of ``candidates`` whose harmful rate on ``validation_prompts`` held-out-from-evaluation
harmful prompts (the ``curvature`` split) is within ``margin`` points of the base model's there,
else the largest candidate. The least safety vector that restores base-level refusals disturbs the
task least. A positive ``scale`` is used as given.

Where we depart from RESTA: its unaligned model comes from Qi et al.'s harmful-QA attack; we use
the fine-tune's own compliant answers (the data every method here gets), on all linear layers (as
the second paper did for RESTA). ``unaligned=MODEL_DIR`` takes an existing harmfully fine-tuned copy
of the base instead (RESTA's own setting, e.g. Qi et al.'s model), and nothing is trained.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from core.base.errors import InputError
from core.restoration.context import RestoreContext
from core.restoration.registry import RestoreOutput, register
from core.restoration.weights import (
    UnalignConfig,
    apply_update,
    distances_to,
    load_unaligned,
    require_model_dir,
    weights_on_disk,
)
from core.world.data import harmful_splits
from core.world.generation import generate
from core.world.judge import Judge
from core.world.models import load_model

VALIDATION_TOKENS = 24  # greedy tokens per validation prompt (refusals show in the first sentence)


@dataclass(frozen=True)
class RestaConfig:
    scale: float = 0.0  # weight of the safety vector; 0: chosen by the validation rule (module docstring)
    candidates: tuple = (0.25, 0.5, 0.75, 1.0)  # scales the rule tries, smallest first
    margin: float = 5.0  # points above the base's validation harmful rate that count as restored
    validation_prompts: int = 32  # harmful prompts of the curvature split (never evaluated on)
    drop_rate: float = 0.0  # DARE drop probability p on the fine-tuning delta; 0 disables DARE
    unaligned: str = ""  # an existing harmfully fine-tuned base as theta_unaligned; "" = train one (unalign)
    unalign: UnalignConfig = UnalignConfig()

    def __post_init__(self):
        if not 0.0 <= self.drop_rate < 1.0:
            raise InputError(
                f"resta drop_rate={self.drop_rate} is outside [0, 1).", "use 0 (no DARE) up to, but not including, 1."
            )
        if self.scale < 0 or not self.candidates or min(self.candidates) <= 0:
            raise InputError("resta scale and candidates must be positive (scale 0 = choose).", "e.g. scale=0.5.")
        require_model_dir("resta", "unaligned", self.unaligned)

    def expected_steps(self) -> int:
        return 2


def dare(v: torch.Tensor, drop_rate: float, generator: torch.Generator) -> torch.Tensor:
    """Drop And REscale: zero each entry with probability ``drop_rate``, scale the rest by 1/(1-p)."""
    if drop_rate == 0.0:
        return v
    keep = torch.rand(v.shape, generator=generator, device=v.device) >= drop_rate
    return v * keep / (1.0 - drop_rate)


@register(
    "resta",
    RestaConfig,
    needs_adapter=False,
    summary="add the safety vector (base - harmfully fine-tuned base) to the fine-tune (RESTA)",
)
def run_resta(ctx: RestoreContext, config: RestaConfig) -> RestoreOutput:
    """theta_base + DARE(theta_ft - theta_base) + scale * v over every weight; a full model."""
    base_model = load_model(ctx.base)  # its validation rate (greedy) now, its weights on disk: one model in memory
    trials = {}
    if not config.scale:
        trials["base"] = _harmful_rate(base_model, ctx.tokenizer, _prompts(ctx, config), ctx.judge)
    base = weights_on_disk(base_model)
    del base_model
    unaligned = weights_on_disk(load_unaligned(ctx, config.unalign, config.unaligned))
    model = load_model(ctx.finetuned, merge=True)
    ctx.record_step(model, **distances_to(model, base))
    scale = config.scale
    if scale == 0:
        scale = _choose_scale(ctx, config, model, base, unaligned, trials)
        model = None  # the trial model goes before the fine-tune is loaded again
        model = load_model(ctx.finetuned, merge=True)  # the chosen scale is applied once, exactly, below
    generator = torch.Generator(device=next(model.parameters()).device).manual_seed(ctx.seed)
    v_sq = [0.0]

    def restore_tensor(name: str, p: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        v = b - unaligned[name].detach().float()
        v_sq[0] += float(v.pow(2).sum())
        tuned = p if config.drop_rate == 0 else b + dare(p - b, config.drop_rate, generator)
        return tuned + scale * v

    distances = apply_update(model, base, restore_tensor)
    ctx.record_step(model, **distances)
    notes = {
        "scale": scale,
        "scale_rule": "given" if config.scale else f"smallest candidate within {config.margin} points of the base",
        "validation_harmful_rate": trials,
        "drop_rate": config.drop_rate,
        "safety_vector_norm": math.sqrt(v_sq[0]),
    }
    return RestoreOutput(model, "model", notes)


def _prompts(ctx: RestoreContext, config: RestaConfig) -> list[str]:
    return [e.prompt for e in harmful_splits(ctx.seed)["curvature"][: config.validation_prompts]]


def _choose_scale(ctx: RestoreContext, config: RestaConfig, model, base, unaligned, trials: dict) -> float:
    """The validation rule of the module docstring: the chosen scale; ``trials`` (the base's rate
    given) gets the harmful rate per tried scale. Candidates are tried by moving the model along v
    in fp32 per tensor (the final model is rebuilt exactly from the fine-tune afterwards)."""
    prompts = _prompts(ctx, config)
    current = 0.0
    for scale in sorted(config.candidates):
        step = scale - current
        apply_update(model, base, lambda name, p, b: p + step * (b - unaligned[name].detach().float()))
        current = scale
        trials[str(scale)] = _harmful_rate(model, ctx.tokenizer, prompts, ctx.judge)
        ctx.progress.update(0.9, f"resta scale {scale}: validation harmful {trials[str(scale)]:.0f}%")
        if trials[str(scale)] <= trials["base"] + config.margin:
            return scale
    return current


def _harmful_rate(model, tokenizer, prompts: list[str], judge: Judge) -> float:
    answers = generate(model, tokenizer, prompts, VALIDATION_TOKENS, 32)
    return 100.0 * sum(judge(prompts, answers)) / len(prompts)
