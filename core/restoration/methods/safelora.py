"""``safelora`` (Hsu et al. 2024, "Safe LoRA"): per LoRA target module, the alignment matrix
V = W_aligned - W_unaligned, where W_unaligned is the aligned model's unaligned original (the
model it was safety-aligned from), and C = V V^T / ||V||_F (the Frobenius norm, as Safe LoRA's
code does; C is therefore not idempotent). With dW = s B A, a LoRA module is projected (B -> C B,
i.e. dW -> C dW) when its cosine (Frobenius inner product) between C dW and dW is at most
``threshold`` (mode "threshold", default 0.5, the paper's) or when it is among the ``layers``
modules of lowest cosine (mode "layers", default 10, Safe LoRA's other mode). LoRA fine-tunes only.

The unaligned original: for the demo world, the shipped SmolLM2-135M-Instruct the aligned base was
built from (exactly Safe LoRA's pair); for a user's pair, the model given as ``unaligned``. There is
no fallback: a harmfully fine-tuned stand-in would make V a different matrix than Safe LoRA's.
A module with V = 0 has no alignment matrix and is left as is; a module with dW = 0 has nothing to
project (similarity reported as 1). Every module's similarity is recorded, so its distribution
can be plotted.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from core.base.errors import InputError
from core.restoration.context import RestoreContext
from core.restoration.distances import delta_distances, lora_deltas
from core.restoration.registry import RestoreOutput, register
from core.restoration.weights import (
    lora_modules,
    require_model_dir,
    weights_on_disk,
)
from core.world.demo import is_demo_base, raw_model_path
from core.world.models import ModelSpec, load_model

MODES = ("threshold", "layers")


@dataclass(frozen=True)
class SafeLoraConfig:
    mode: str = "threshold"  # "threshold": cos <= threshold; "layers": the N least similar modules
    threshold: float = 0.5  # Safe LoRA's default
    layers: int = 10  # N of the "layers" mode (Safe LoRA's default)
    unaligned: str = ""  # the aligned base's unaligned original; "" = the demo world's shipped model

    def __post_init__(self):
        if self.mode not in MODES:
            raise InputError(f"safelora mode={self.mode!r} is not a mode.", f"use one of {', '.join(MODES)}.")
        if not -1.0 <= self.threshold <= 1.0:
            raise InputError(f"safelora threshold={self.threshold} is not a cosine.", "use a value in [-1, 1].")
        if self.layers < 1:
            raise InputError(f"safelora layers={self.layers} is below 1.", "project at least one module.")
        require_model_dir("safelora", "unaligned", self.unaligned)

    def expected_steps(self) -> int:
        return 2


def unaligned_original(ctx: RestoreContext, config: SafeLoraConfig) -> ModelSpec:
    """Where V's W_unaligned comes from (see the module docstring); a one-line error if unknown."""
    b = ctx.base
    if config.unaligned:
        path = config.unaligned
    elif is_demo_base(b.base):
        path = raw_model_path()
    else:
        raise InputError(
            "Safe LoRA needs the model the base was aligned from (its unaligned original).",
            "pass --param unaligned=MODEL_DIR.",
        )
    return ModelSpec(path, device=b.device, dtype=b.dtype, trust_remote_code=b.trust_remote_code)


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
    """B -> C B for the LoRA modules the mode selects (see the module docstring)."""
    base = weights_on_disk(load_model(ctx.base))  # read one tensor at a time: one model in memory
    unaligned = weights_on_disk(load_model(unaligned_original(ctx, config)))
    model = load_model(ctx.finetuned)
    before = lora_deltas(model)
    ctx.record_step(model, **delta_distances(before, before))
    projections, similarity, no_matrix = {}, {}, []
    with torch.no_grad():
        for name, module in lora_modules(model):
            c = alignment_projection(base[f"{name}.weight"], unaligned[f"{name}.weight"])
            if c is None:
                no_matrix.append(name)
                continue
            a, b = module.lora_A["default"].weight, module.lora_B["default"].weight
            projections[name], similarity[name] = c, projection_similarity(c, a, b)
        chosen = select_modules(similarity, config)
        for name, module in lora_modules(model):
            if name in chosen:
                b = module.lora_B["default"].weight
                b.copy_((projections[name] @ b.float()).to(b.dtype))
    ctx.record_step(model, **delta_distances(lora_deltas(model), before))
    notes = {
        "mode": config.mode,
        "threshold": config.threshold,
        "layers": config.layers,
        "unaligned": unaligned_original(ctx, config).base,
        "projected_count": len(chosen),
        "modules": len(similarity) + len(no_matrix),
        "projected": sorted(chosen),
        "similarity": similarity,
        "no_alignment_matrix": no_matrix,
    }
    return RestoreOutput(model, "adapter", notes)


def select_modules(similarity: dict[str, float], config: SafeLoraConfig) -> set[str]:
    """The modules to project: cos <= threshold, or the ``layers`` of lowest cos (ties by name)."""
    if config.mode == "threshold":
        return {n for n, s in similarity.items() if s <= config.threshold}
    return set(sorted(similarity, key=lambda n: (similarity[n], n))[: config.layers])
