"""Weight-arithmetic baselines for safety restoration: ``interpolate``, ``resta`` and ``safelora``.

They run on the same terms as the main methods (same pair, same ``RestorationData``, same
monitor, two recorded steps: the fine-tuned model, then the restored one) so their before/after
numbers are directly comparable.

* ``interpolate``: restored = theta_ft + alpha (theta_base - theta_ft), alpha in [0, 1] (default
  0.5). For a LoRA fine-tune (theta_ft = theta_base + s B A) this is exactly B -> (1 - alpha) B,
  so the result stays an adapter; a full fine-tune is interpolated weight by weight.
* ``resta`` (Bhardwaj et al. 2024, "Language Models are Homer Simpson!"): safety vector
  v = theta_base - theta_unaligned over every weight, restored = theta_ft + scale * v (default
  scale 1: the second paper's +1, +1, -1 over fine-tuned, aligned, unaligned). Optional DARE:
  drop each entry of v with probability p and rescale the rest by 1 / (1 - p), seeded by the run.
  The result is a full model (an adapter is merged first).
* ``safelora`` (Hsu et al. 2024, "Safe LoRA"): per LoRA target module, the alignment matrix
  V = W_base - W_unaligned and C = V V^T / ||V||_F (the Frobenius norm, as Safe LoRA's code does;
  C is therefore not idempotent). With dW = s B A, a module whose cosine (Frobenius inner product)
  between C dW and dW is at most ``threshold`` (default 0.5, the paper's) gets B -> C B, i.e.
  dW -> C dW. LoRA fine-tunes only.

The unaligned model (shared by ``resta`` and ``safelora``) is the base fine-tuned with LoRA on
harmful compliance data (the run's forget set: harmful prompts with the fine-tune's compliant
answers), with the demo world's attack recipe on every linear layer so v covers every weight a
LoRA might touch, then merged. It is cached under ``cache/unaligned/<hash>`` (written atomically).

Where we depart from the papers:
* RESTA builds its unaligned model with Qi et al.'s harmful-QA attack; we use the fine-tune's own
  compliant answers (the data every method here gets), on all linear layers (as the second paper
  did for RESTA). RESTA's DARE acts on delta parameters; here, per REFERENCES.md, on v.
* Safe LoRA takes V from a published base/chat pair (pre-alignment vs aligned weights); for an
  arbitrary pair we have no pre-alignment model, so the harmful fine-tune above plays that role.
  Its alternative "project the N least similar layers" mode is not implemented.
* A module with V = 0 (untouched by the unalignment) has no alignment matrix and is left as is;
  a module with dW = 0 has nothing to project (similarity reported as 1).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from core.cache import atomic_dir, stable_hash
from core.data import Example, fingerprint as data_fingerprint
from core.errors import InputError
from core.models import ModelSpec, fingerprint, load_model, load_tokenizer
from core.paths import cache_dir
from core.progress import Progress
from core.restore import RestoreContext, RestoreOutput, delta_distances, lora_deltas, register
from core.training import SFTConfig, lora_sft
from core.world import ALL_LINEAR

PEFT_PREFIX = "base_model.model."


# ---------------------------------------------------------------------------- configs
@dataclass(frozen=True)
class UnalignConfig:
    """How the unaligned model is trained: the demo world's attack recipe, on all linear layers."""

    sft: SFTConfig = SFTConfig(steps=30, batch_size=8, lr=1e-3, rank=8, alpha=16, target_modules=ALL_LINEAR, autocast=True)


@dataclass(frozen=True)
class InterpolateConfig:
    alpha: float = 0.5  # 0: the fine-tune, 1: the base

    def __post_init__(self):
        if not 0.0 <= self.alpha <= 1.0:
            raise InputError(f"interpolate alpha={self.alpha} is outside [0, 1].", "use 0 (the fine-tune) to 1 (the base).")

    def expected_steps(self) -> int:
        return 2


@dataclass(frozen=True)
class RestaConfig:
    scale: float = 1.0  # weight of the safety vector
    drop_rate: float = 0.0  # DARE drop probability p; 0 disables DARE
    unalign: UnalignConfig = UnalignConfig()

    def __post_init__(self):
        if not 0.0 <= self.drop_rate < 1.0:
            raise InputError(f"resta drop_rate={self.drop_rate} is outside [0, 1).", "use 0 (no DARE) up to, but not including, 1.")

    def expected_steps(self) -> int:
        return 2


@dataclass(frozen=True)
class SafeLoraConfig:
    threshold: float = 0.5  # project modules whose cos(C dW, dW) is at most this
    unalign: UnalignConfig = UnalignConfig()

    def expected_steps(self) -> int:
        return 2


# ---------------------------------------------------------------------------- the unaligned model
def unaligned_model_dir(base: ModelSpec, data: list[Example], config: UnalignConfig, progress: Progress | None = None) -> Path:
    """The base fine-tuned with LoRA on harmful compliance ``data`` and merged; built once, cached."""
    progress = progress or Progress()
    target = cache_dir() / "unaligned" / stable_hash(fingerprint(base), data_fingerprint(data), asdict(config), "unaligned-v1")
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


def _load_unaligned(ctx: RestoreContext, config: UnalignConfig):
    path = unaligned_model_dir(ctx.base, ctx.data.forget, config, ctx.progress.stage(0.5, 0.95))
    b = ctx.base
    return load_model(ModelSpec(str(path), device=b.device, dtype=b.dtype, trust_remote_code=b.trust_remote_code))


# ---------------------------------------------------------------------------- full-weight helpers
def _params(model) -> dict[str, torch.Tensor]:
    return dict(model.named_parameters())


def _distances_to(model, base: dict[str, torch.Tensor]) -> dict[str, float]:
    """Distances of an unchanged fine-tuned model: 0 to itself, ||theta_ft - theta_base|| to the base."""
    sq = sum(float((p.detach().float() - base[n].detach().float()).pow(2).sum()) for n, p in model.named_parameters())
    return {"distance_to_finetuned": 0.0, "distance_to_base": math.sqrt(sq)}


@torch.no_grad()
def _apply(model, base: dict[str, torch.Tensor], update) -> dict[str, float]:
    """Replace every weight p by ``update(name, p, p_base)`` (float32 in, cast back) in place and
    return the distances of the result to the fine-tuned (the old p) and base weights, as
    ``delta_distances`` defines them, one tensor at a time so no second model copy is kept."""
    to_ft = to_base = 0.0
    for name, p in model.named_parameters():
        old, b = p.detach().float(), base[name].detach().float()
        new = update(name, old, b).to(p.dtype)
        to_ft += float((new.float() - old).pow(2).sum())
        to_base += float((new.float() - b).pow(2).sum())
        p.copy_(new)
    return {"distance_to_finetuned": math.sqrt(to_ft), "distance_to_base": math.sqrt(to_base)}


def _is_adapter(spec: ModelSpec) -> bool:
    return bool(spec.finetuned) and (Path(spec.finetuned) / "adapter_config.json").exists()


def _lora_modules(model):
    """(plain module name, module) for every LoRA-wrapped module of a PeftModel."""
    for name, module in model.named_modules():
        if hasattr(module, "lora_A") and "default" in getattr(module, "lora_A", {}):
            yield name.removeprefix(PEFT_PREFIX), module


# ---------------------------------------------------------------------------- interpolate
@register("interpolate", InterpolateConfig, needs_adapter=False, summary="move the fine-tune a fraction alpha back toward the base in weight space")
def run_interpolate(ctx: RestoreContext, config: InterpolateConfig) -> RestoreOutput:
    """theta_ft + alpha (theta_base - theta_ft): B -> (1 - alpha) B for an adapter, weights otherwise."""
    model = load_model(ctx.finetuned)
    if _is_adapter(ctx.finetuned):
        before = lora_deltas(model)
        ctx.record_step(model, **delta_distances(before, before))
        with torch.no_grad():
            for _, module in _lora_modules(model):
                module.lora_B["default"].weight.mul_(1.0 - config.alpha)
        ctx.record_step(model, **delta_distances(lora_deltas(model), before))
        return RestoreOutput(model, "adapter", {"alpha": config.alpha, "form": "adapter: B scaled by 1 - alpha"})
    base = _params(load_model(ctx.base))
    ctx.record_step(model, **_distances_to(model, base))
    distances = _apply(model, base, lambda _, p, b: torch.lerp(p, b, config.alpha))
    ctx.record_step(model, **distances)
    return RestoreOutput(model, "model", {"alpha": config.alpha, "form": "weights"})


# ---------------------------------------------------------------------------- resta
def dare(v: torch.Tensor, drop_rate: float, generator: torch.Generator) -> torch.Tensor:
    """Drop And REscale: zero each entry with probability ``drop_rate``, scale the rest by 1/(1-p)."""
    if drop_rate == 0.0:
        return v
    keep = torch.rand(v.shape, generator=generator, device=v.device) >= drop_rate
    return v * keep / (1.0 - drop_rate)


@register("resta", RestaConfig, needs_adapter=False, summary="add the safety vector (base - harmfully fine-tuned base) to the fine-tune (RESTA)")
def run_resta(ctx: RestoreContext, config: RestaConfig) -> RestoreOutput:
    """theta_ft + scale * DARE(theta_base - theta_unaligned) over every weight; a full model."""
    model = load_model(ctx.finetuned, merge=True)
    base = _params(load_model(ctx.base))
    ctx.record_step(model, **_distances_to(model, base))
    unaligned = _params(_load_unaligned(ctx, config.unalign))
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(ctx.seed)
    v_sq = [0.0]

    def add_safety_vector(name: str, p: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        v = dare(b - unaligned[name].detach().float(), config.drop_rate, generator)
        v_sq[0] += float(v.pow(2).sum())
        return p + config.scale * v

    distances = _apply(model, base, add_safety_vector)
    ctx.record_step(model, **distances)
    notes = {"scale": config.scale, "drop_rate": config.drop_rate, "safety_vector_norm": math.sqrt(v_sq[0])}
    return RestoreOutput(model, "model", notes)


# ---------------------------------------------------------------------------- safelora
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


@register("safelora", SafeLoraConfig, needs_adapter=True, summary="project LoRA updates dissimilar to the alignment matrix onto it (Safe LoRA)")
def run_safelora(ctx: RestoreContext, config: SafeLoraConfig) -> RestoreOutput:
    """B -> C B for every LoRA module whose cos(C dW, dW) is at most ``threshold``."""
    model = load_model(ctx.finetuned)
    before = lora_deltas(model)
    ctx.record_step(model, **delta_distances(before, before))
    base = _params(load_model(ctx.base))
    unaligned = _params(_load_unaligned(ctx, config.unalign))
    similarity, projected, no_matrix = {}, [], []
    with torch.no_grad():
        for name, module in _lora_modules(model):
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
        "threshold": config.threshold, "projected_count": len(projected), "modules": len(similarity) + len(no_matrix),
        "projected": projected, "similarity": similarity, "no_alignment_matrix": no_matrix,
    }
    return RestoreOutput(model, "adapter", notes)
