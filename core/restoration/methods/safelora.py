"""``safelora`` (Hsu et al. 2024, "Safe LoRA"): per LoRA target module, the alignment matrix
V = W_base - W_unaligned and C = V V^T / ||V||_F (the Frobenius norm, as Safe LoRA's code does;
C is therefore not idempotent). With dW = s B A, a module whose cosine (Frobenius inner product)
between C dW and dW is at most ``threshold`` (default 0.5, the paper's) gets B -> C B, i.e.
dW -> C dW. LoRA fine-tunes only.

Where we depart from Safe LoRA: it takes V from a published base/chat pair (pre-alignment vs
aligned weights); for an arbitrary pair we have no pre-alignment model, so the harmful fine-tune
of ``core.restoration.weights`` plays that role. Its "project the N least similar layers" mode is
not implemented. A module with V = 0 has no alignment matrix and is left as is; a module with
dW = 0 has nothing to project (similarity reported as 1).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from core.restoration.context import RestoreContext
from core.restoration.distances import delta_distances, lora_deltas
from core.restoration.registry import RestoreOutput, register
from core.restoration.weights import (
    UnalignConfig,
    load_unaligned,
    lora_modules,
    named_weights,
)
from core.world.models import load_model


@dataclass(frozen=True)
class SafeLoraConfig:
    threshold: float = 0.5  # project modules whose cos(C dW, dW) is at most this
    unalign: UnalignConfig = UnalignConfig()

    def expected_steps(self) -> int:
        return 2


def alignment_projection(w_base: torch.Tensor, w_unaligned: torch.Tensor) -> torch.Tensor | None:
    """Safe LoRA's C = V V^T / ||V||_F with V = W_base - W_unaligned (float32); None where V = 0."""
    v = w_base.detach().float() - w_unaligned.detach().float()
    norm = torch.linalg.norm(v)
    return None if norm == 0 else (v @ v.T) / norm


def projection_similarity(c: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> float:
    """cos(C B A, B A) as a Frobenius inner product (the LoRA scaling cancels); 1 for B A = 0."""
    delta = b.float() @ a.float()
    projected = c @ delta
    denom = torch.linalg.norm(projected) * torch.linalg.norm(delta)
    return 1.0 if denom == 0 else float(((projected * delta).sum() / denom).clamp(-1.0, 1.0))


@register(
    "safelora",
    SafeLoraConfig,
    needs_adapter=True,
    summary="project LoRA updates dissimilar to the alignment matrix onto it (Safe LoRA)",
)
def run_safelora(ctx: RestoreContext, config: SafeLoraConfig) -> RestoreOutput:
    """B -> C B for every LoRA module whose cos(C dW, dW) is at most ``threshold``."""
    model = load_model(ctx.finetuned)
    before = lora_deltas(model)
    ctx.record_step(model, **delta_distances(before, before))
    base = named_weights(load_model(ctx.base))
    unaligned = named_weights(load_unaligned(ctx, config.unalign))
    similarity, projected, no_matrix = {}, [], []
    with torch.no_grad():
        for name, module in lora_modules(model):
            c = alignment_projection(base[f"{name}.weight"], unaligned[f"{name}.weight"])
            if c is None:
                no_matrix.append(name)
                continue
            a, b = module.lora_A["default"].weight, module.lora_B["default"].weight
            similarity[name] = projection_similarity(c, a, b)
            if similarity[name] <= config.threshold:
                b.copy_((c @ b.float()).to(b.dtype))
                projected.append(name)
    ctx.record_step(model, **delta_distances(lora_deltas(model), before))
    notes = {
        "threshold": config.threshold,
        "projected_count": len(projected),
        "modules": len(similarity) + len(no_matrix),
        "projected": projected,
        "similarity": similarity,
        "no_alignment_matrix": no_matrix,
    }
    return RestoreOutput(model, "adapter", notes)
