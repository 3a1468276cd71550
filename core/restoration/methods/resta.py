"""``resta`` (Bhardwaj et al. 2024, "Language Models are Homer Simpson!"): safety vector
v = theta_base - theta_unaligned over every weight, restored = theta_ft + scale * v (default
scale 1: the second paper's +1, +1, -1 over fine-tuned, aligned, unaligned). Optional DARE:
drop each entry of v with probability p and rescale the rest by 1 / (1 - p), seeded by the run.
The result is a full model (an adapter is merged first).

Where we depart from RESTA: its unaligned model comes from Qi et al.'s harmful-QA attack; we use
the fine-tune's own compliant answers (the data every method here gets), on all linear layers (as
the second paper did for RESTA). RESTA's DARE acts on delta parameters; here, per REFERENCES.md,
on v.
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
    named_weights,
)
from core.world.models import load_model


@dataclass(frozen=True)
class RestaConfig:
    scale: float = 1.0  # weight of the safety vector
    drop_rate: float = 0.0  # DARE drop probability p; 0 disables DARE
    unalign: UnalignConfig = UnalignConfig()

    def __post_init__(self):
        if not 0.0 <= self.drop_rate < 1.0:
            raise InputError(
                f"resta drop_rate={self.drop_rate} is outside [0, 1).", "use 0 (no DARE) up to, but not including, 1."
            )

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
    """theta_ft + scale * DARE(theta_base - theta_unaligned) over every weight; a full model."""
    model = load_model(ctx.finetuned, merge=True)
    base = named_weights(load_model(ctx.base))
    ctx.record_step(model, **distances_to(model, base))
    unaligned = named_weights(load_unaligned(ctx, config.unalign))
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(ctx.seed)
    v_sq = [0.0]

    def add_safety_vector(name: str, p: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        v = dare(b - unaligned[name].detach().float(), config.drop_rate, generator)
        v_sq[0] += float(v.pow(2).sum())
        return p + config.scale * v

    distances = apply_update(model, base, add_safety_vector)
    ctx.record_step(model, **distances)
    notes = {"scale": config.scale, "drop_rate": config.drop_rate, "safety_vector_norm": math.sqrt(v_sq[0])}
    return RestoreOutput(model, "model", notes)
