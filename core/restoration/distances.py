"""Weight-space distances of a restored model to the fine-tuned and the base model."""

from __future__ import annotations

import math

import torch


def lora_deltas(model) -> dict[str, torch.Tensor]:
    """Effective weight update (scaling * B @ A) of every LoRA module of a PeftModel."""
    out = {}
    for name, module in model.named_modules():
        if hasattr(module, "lora_A") and "default" in getattr(module, "lora_A", {}):
            a, b = module.lora_A["default"].weight, module.lora_B["default"].weight
            out[name] = (b.detach().float() @ a.detach().float()) * module.scaling["default"]
    return out


def squared_distance(w: torch.Tensor, reference: torch.Tensor) -> float:
    """||w - reference||^2 in fp32, one tensor at a time."""
    return float((w.float() - reference.float()).pow(2).sum())


def delta_distances(current: dict[str, torch.Tensor], finetuned: dict[str, torch.Tensor]) -> dict[str, float]:
    """Frobenius distances of the restored weights to the fine-tuned and to the base weights,
    given weight deltas from the base (so the base is the zero delta)."""
    to_ft = math.sqrt(sum(squared_distance(current[k], finetuned[k]) for k in current))
    to_base = math.sqrt(sum(float(current[k].pow(2).sum()) for k in current))
    return {"distance_to_finetuned": to_ft, "distance_to_base": to_base}
