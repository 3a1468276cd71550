"""``interpolate``: restored = theta_ft + alpha (theta_base - theta_ft), alpha in [0, 1] (default
0.5). For a LoRA fine-tune (theta_ft = theta_base + s B A) this is exactly B -> (1 - alpha) B,
so the result stays an adapter; a full fine-tune is interpolated weight by weight.

Like every baseline it runs on the same terms as the main methods (same pair, data and monitor;
two recorded steps: the fine-tuned model, then the restored one).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from core.base.errors import InputError
from core.base.paths import is_adapter_dir
from core.restoration.context import RestoreContext
from core.restoration.distances import delta_distances, lora_deltas
from core.restoration.registry import RestoreOutput, register
from core.restoration.weights import (
    apply_update,
    distances_to,
    lora_modules,
    named_weights,
)
from core.world.models import load_model


@dataclass(frozen=True)
class InterpolateConfig:
    alpha: float = 0.5  # 0: the fine-tune, 1: the base

    def __post_init__(self):
        if not 0.0 <= self.alpha <= 1.0:
            raise InputError(
                f"interpolate alpha={self.alpha} is outside [0, 1].", "use 0 (the fine-tune) to 1 (the base)."
            )

    def expected_steps(self) -> int:
        return 2


@register(
    "interpolate",
    InterpolateConfig,
    needs_adapter=False,
    summary="move the fine-tune a fraction alpha back toward the base in weight space",
)
def run_interpolate(ctx: RestoreContext, config: InterpolateConfig) -> RestoreOutput:
    """theta_ft + alpha (theta_base - theta_ft): B -> (1 - alpha) B for an adapter, weights otherwise."""
    model = load_model(ctx.finetuned)
    if is_adapter_dir(ctx.finetuned.finetuned):
        before = lora_deltas(model)
        ctx.record_step(model, **delta_distances(before, before))
        with torch.no_grad():
            for _, module in lora_modules(model):
                module.lora_B["default"].weight.mul_(1.0 - config.alpha)
        ctx.record_step(model, **delta_distances(lora_deltas(model), before))
        return RestoreOutput(model, "adapter", {"alpha": config.alpha, "form": "adapter: B scaled by 1 - alpha"})
    base = named_weights(load_model(ctx.base))
    ctx.record_step(model, **distances_to(model, base))
    distances = apply_update(model, base, lambda _, p, b: torch.lerp(p, b, config.alpha))
    ctx.record_step(model, **distances)
    return RestoreOutput(model, "model", {"alpha": config.alpha, "form": "weights"})
