"""Weight arithmetic shared by the baselines ``interpolate``, ``resta`` and ``safelora``
(``core.restoration.methods``): the unaligned model, full-weight updates applied tensor by tensor,
and the LoRA modules of a PeftModel.

Reference weights (the base, the unaligned model) are kept in scratch safetensors files once
loaded (``weights_on_disk``) and read back one tensor at a time, so the arithmetic holds one
model in memory, not three (issue 13); the bits are those of the loaded model.

The unaligned model (shared by ``resta`` and ``safelora``) is the base fine-tuned with LoRA on
harmful compliance data (the run's forget set: harmful prompts with the fine-tune's compliant
answers), with the demo world's attack recipe on every linear layer so v covers every weight a
LoRA might touch, then merged. It is cached under ``cache/unaligned/<hash>`` (written atomically).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Mapping

import torch

from core.base import lean
from core.base.cache import atomic_dir, stable_hash
from core.base.errors import InputError
from core.base.paths import cache_dir
from core.base.progress import Progress
from core.restoration.context import RestoreContext
from core.restoration.distances import squared_distance
from core.world.data import Example
from core.world.data import fingerprint as data_fingerprint
from core.world.models import ALL_LINEAR, ModelSpec, fingerprint, load_model, load_tokenizer
from core.world.training import SFTConfig, lora_sft

PEFT_PREFIX = "base_model.model."


@dataclass(frozen=True)
class UnalignConfig:
    """How the unaligned model is trained: the demo world's attack recipe, on all linear layers."""

    sft: SFTConfig = SFTConfig(
        steps=30, batch_size=8, lr=1e-3, rank=8, alpha=16, target_modules=ALL_LINEAR, autocast=True
    )


def unaligned_model_dir(
    base: ModelSpec, data: list[Example], config: UnalignConfig, progress: Progress | None = None
) -> Path:
    """The base fine-tuned with LoRA on harmful compliance ``data`` and merged; built once, cached."""
    progress = progress or Progress()
    target = (
        cache_dir()
        / "unaligned"
        / stable_hash(fingerprint(base), data_fingerprint(data), asdict(config), "unaligned-v1")
    )
    if (target / "config.json").exists():
        progress.update(1.0, "unaligned model: cached")
        return target
    progress.update(0.0, "unaligned model: training on harmful compliance data")
    tok = load_tokenizer(base)
    tuned = lora_sft(load_model(base), tok, data, config.sft, progress.stage(0.0, 0.95))
    merged = tuned.model.merge_and_unload()
    progress.update(0.95, "unaligned model: saving")
    with atomic_dir(target) as tmp:
        _save(merged, tok, tmp)
    progress.update(1.0, "unaligned model: built")
    return target


def _save(model, tokenizer, path: Path) -> None:
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)


def load_unaligned(ctx: RestoreContext, config: UnalignConfig, given: str = ""):
    """The unaligned model: ``given`` (a model directory) when set, else the base fine-tuned by
    ``config`` on the forget set's compliant answers (built once, cached)."""
    path = given or unaligned_model_dir(ctx.base, ctx.data.forget, config, ctx.progress.stage(0.5, 0.95))
    b = ctx.base
    return load_model(ModelSpec(str(path), device=b.device, dtype=b.dtype, trust_remote_code=b.trust_remote_code))


def require_model_dir(method: str, key: str, value: str) -> None:
    """A one-line error when a method's model-directory parameter names nothing on disk."""
    if value and not Path(value).expanduser().exists():
        raise InputError(f"{method} {key}={value!r} does not exist.", "pass a local model directory.")


# ---------------------------------------------------------------------------- full-weight helpers
def named_weights(model) -> dict[str, torch.Tensor]:
    return dict(model.named_parameters())


def weights_on_disk(model) -> lean.DiskTensors:
    """A loaded model's weights in a scratch safetensors file, each read back alone (``core.base.lean``):
    the model itself can then be freed."""
    return lean.DiskTensors(dict(model.named_parameters()), model.named_parameters())


def distances_to(model, base: Mapping[str, torch.Tensor]) -> dict[str, float]:
    """Distances of an unchanged fine-tuned model: 0 to itself, ||theta_ft - theta_base|| to the base."""
    sq = sum(squared_distance(p.detach(), base[n].detach()) for n, p in model.named_parameters())
    return {"distance_to_finetuned": 0.0, "distance_to_base": math.sqrt(sq)}


@torch.no_grad()
def apply_update(model, base: Mapping[str, torch.Tensor], update) -> dict[str, float]:
    """Replace every weight p by ``update(name, p, p_base)`` (float32 in, cast back) in place and
    return the distances of the result to the fine-tuned (the old p) and base weights, as
    ``delta_distances`` defines them, one tensor at a time so no second model copy is kept."""
    to_ft = to_base = 0.0
    for name, p in model.named_parameters():
        old, b = p.detach().float(), base[name].detach().float()
        new = update(name, old, b).to(p.dtype)
        to_ft += squared_distance(new, old)
        to_base += squared_distance(new, b)
        p.copy_(new)
    return {"distance_to_finetuned": math.sqrt(to_ft), "distance_to_base": math.sqrt(to_base)}


def lora_modules(model):
    """(plain module name, module) for every LoRA-wrapped module of a PeftModel."""
    for name, module in model.named_modules():
        if hasattr(module, "lora_A") and "default" in getattr(module, "lora_A", {}):
            yield name.removeprefix(PEFT_PREFIX), module
