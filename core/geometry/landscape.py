"""Gradient-informed 3D loss landscapes and the Laplacian structural-difference metric
(paper 1, section 2.2 and appendix B.3, equations 6-8).

Directions (eq. 6): d_k = normalize(g * s_k) over the attention and MLP weight matrices, where
g is the loss gradient accumulated on a fixed batch and s_k an element-wise Gaussian scaling
drawn from a direction-specific seed (1000 and 2000), so d_1 and d_2 are nearly orthogonal
(their cosine is reported). Each tensor of a direction is scaled to the norm of the matching
weight tensor (layer normalisation as in Li et al. 2018), so coefficients are fractions of the
weights' norms. The gradient is taken on the base model, and the same directions are used for
both models (a LoRA fine-tune is merged first, so parameter names are shared).

Grid (eq. 7): theta + a*d_1 + b*d_2 for a, b on an n x n grid in [-r, r]; the mean loss over a
fixed set of samples at every point, evaluated row by row in place on one model copy: each row
starts from an exact ``theta0 + a*d_1 + b_0*d_2`` and steps along b with one in-place axpy per
point; the original weights are copied back exactly at the end.

Structural difference (eq. 8): 100 * (1 - corr(Lap(L_base), Lap(L_ft))), the Laplacian by
finite differences (``scipy.ndimage.laplace``), compared by Pearson correlation.

Defaults (the paper omits n and r): n = 9, r = 0.005 (on the demo model, r = 0.05 already
triples the loss a quarter of the way out, and 0.005 shows the basin's shape), 32 samples
(the paper's); all are parameters.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
from scipy import ndimage, stats

from core.base.cache import memoize
from core.base.errors import InputError
from core.base.options import from_args, option
from core.base.progress import Progress
from core.base.tensors import cosine
from core.geometry.correlation import default_sets
from core.geometry.registry import Analysis, register_analysis
from core.world.data import Example, override_sets
from core.world.data import fingerprint as data_fingerprint
from core.world.loss import encode_batches, per_example_loss
from core.world.model_pair import pair_from_args
from core.world.models import ModelSpec, fingerprint, load_model, load_tokenizer

DIRECTION_SEEDS = (1000, 2000)
GRAD_CHUNK = 4


@dataclass(frozen=True)
class LandscapeConfig:
    grid: int = option(9, "n x n grid points", label="Grid points per axis", low=3, high=51)
    radius: float = option(
        0.005,
        "coefficients in [-r, r], fractions of weight norms",
        label="Radius (fraction of weight norms)",
        low=1e-4,
        high=1.0,
    )
    samples: int = option(32, "samples per loss evaluation (the paper's 32)", label="Samples per loss", low=1, high=256)
    batch_size: int = 16
    max_length: int = 192
    directions: str = option(
        "gradient",
        "gradient (paper B.3) or random (filter-normalised, Li et al. 2018)",
        label="Directions",
        choices=("gradient", "random"),
    )
    modules: tuple[str, ...] = option(
        ("self_attn", "mlp"), "comma-separated module kinds to perturb", label="Perturbed modules"
    )

    def validate(self) -> None:
        if self.grid < 3:
            raise InputError(
                f"--grid {self.grid} is too small for a Laplacian.", "use a grid of at least 3 (default 11)."
            )
        if not self.radius > 0:
            raise InputError(f"--radius {self.radius} must be positive.", "use a radius such as 0.05.")
        if self.directions not in ("gradient", "random"):
            raise InputError(f"Unknown --directions '{self.directions}'.", "use gradient or random.")
        if self.samples < 1:
            raise InputError(f"--samples {self.samples} must be at least 1.", "use 32 (the paper's value).")


def perturbed_parameters(model: torch.nn.Module, modules: tuple[str, ...]) -> dict[str, torch.nn.Parameter]:
    """The 2-D weight matrices of the named module kinds (attention and MLP by default)."""
    params = {n: p for n, p in model.named_parameters() if p.ndim == 2 and any(f".{m}." in n for m in modules)}
    if not params:
        raise InputError(
            f"No weight matches modules {list(modules)}.",
            "name module kinds present in the model, e.g. self_attn, mlp.",
        )
    return params


def mean_loss(model, batches: list[dict]) -> float:
    """Mean per-example loss over pre-encoded batches."""
    total, count = 0.0, 0
    with torch.no_grad():
        for batch in batches:
            losses = per_example_loss(model, batch)
            total += losses.sum().item()
            count += losses.numel()
    return total / count


def gradient(model, params: dict[str, torch.nn.Parameter], batches: list[dict]) -> dict[str, torch.Tensor]:
    """Loss gradient accumulated over the batches, for the given parameters only."""
    for p in model.parameters():
        p.requires_grad_(False)
    for p in params.values():
        p.requires_grad_(True)
        p.grad = None
    n = sum(b["input_ids"].shape[0] for b in batches)
    for batch in batches:
        for i in range(0, batch["input_ids"].shape[0], GRAD_CHUNK):  # small chunks bound the backward's activations
            chunk = {k: v[i : i + GRAD_CHUNK] for k, v in batch.items()}
            (per_example_loss(model, chunk).sum() / n).backward()
    grads = {name: p.grad.detach().clone() for name, p in params.items()}
    for p in params.values():
        p.grad = None
        p.requires_grad_(False)
    return grads


def gradient_direction(
    grads: dict[str, torch.Tensor], params: dict[str, torch.Tensor], seed: int
) -> dict[str, torch.Tensor]:
    """Eq. 6: g * s (element-wise Gaussian scaling from ``seed``), each tensor scaled to its weight's norm."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name, g in grads.items():
        s = torch.randn(g.shape, generator=gen).to(g.device, g.dtype)
        d = g * s
        out[name] = d * (params[name].norm() / d.norm().clamp_min(1e-12))
    return out


def random_direction(params: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    """Filter-normalised Gaussian direction (Li et al. 2018): each output row gets its weight row's norm."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name, p in params.items():
        d = torch.randn(p.shape, generator=gen).to(p.device, p.dtype)
        out[name] = d * (p.norm(dim=1, keepdim=True) / d.norm(dim=1, keepdim=True).clamp_min(1e-12))
    return out


def surface(
    model, params, d1, d2, coords: np.ndarray, batches: list[dict], progress: Progress, label: str
) -> np.ndarray:
    """Loss on the grid, row by row (row i = coefficient a_i on d1), restoring the weights exactly."""
    theta0 = {n: p.detach().clone() for n, p in params.items()}
    values = np.full((len(coords), len(coords)), np.nan)
    try:
        for i, a in enumerate(coords):
            with torch.no_grad():
                for n, p in params.items():
                    torch.add(theta0[n], d1[n], alpha=float(a), out=p.data)
                    p.data.add_(d2[n], alpha=float(coords[0]))
            for j, b in enumerate(coords):
                if j:
                    with torch.no_grad():
                        for n, p in params.items():
                            p.data.add_(d2[n], alpha=float(b - coords[j - 1]))
                values[i, j] = mean_loss(model, batches)
            if not np.all(np.isfinite(values[i])):
                raise InputError(
                    f"NaN or infinite loss on the {label} landscape at row {i}.", "use a smaller --radius or float32."
                )
            progress.update(
                (i + 1) / len(coords),
                f"{label}: row {i + 1}/{len(coords)}",
                {"label": label, "row": i, "values": values[i].tolist()},
            )
    finally:
        with torch.no_grad():
            for n, p in params.items():
                p.data.copy_(theta0[n])
    return values


def structural_difference(base: np.ndarray, finetuned: np.ndarray) -> float:
    """Eq. 8: 100 * (1 - Pearson corr of the two surfaces' finite-difference Laplacians)."""
    lb, lf = ndimage.laplace(base, mode="nearest").ravel(), ndimage.laplace(finetuned, mode="nearest").ravel()
    if np.std(lb) == 0 or np.std(lf) == 0:
        return float("nan")
    return float(100.0 * (1.0 - stats.pearsonr(lb, lf).statistic))


def cross_sections(values: np.ndarray) -> dict[str, list[float]]:
    """Loss along each direction through the origin (Figure 6)."""
    c = values.shape[0] // 2
    return {"d1": values[:, c].tolist(), "d2": values[c, :].tolist()}


def _directions(model, params, tokenizer, batches, config: LandscapeConfig):
    if config.directions == "random":
        return [random_direction(params, s) for s in DIRECTION_SEEDS]
    grads = gradient(model, params, batches)
    return [gradient_direction(grads, params, s) for s in DIRECTION_SEEDS]


def _compute(
    pair: dict[str, ModelSpec], sets: dict[str, list[Example]], config: LandscapeConfig, progress: Progress
) -> dict:
    coords = np.linspace(-config.radius, config.radius, config.grid)
    tokenizer = load_tokenizer(pair["base"])
    batches = {
        k: encode_batches(tokenizer, v[: config.samples], config.batch_size, config.max_length) for k, v in sets.items()
    }
    result: dict = {
        "coords": coords.tolist(),
        "surfaces": {},
        "cross_sections": {},
        "cosine": {},
        "structural_difference": {},
        "seconds": {},
    }
    order = ["base"] + [m for m in pair if m != "base"]  # the base defines each set's directions
    jobs = [(s, m) for s in sets for m in order]
    base_names: set[str] = set()
    for k, (set_name, model_name) in enumerate(jobs):
        stage = progress.stage(k / len(jobs), (k + 1) / len(jobs))
        model = load_model(pair[model_name], merge=True)  # one model in memory at a time
        params = perturbed_parameters(model, config.modules)
        if model_name == "base":
            d1, d2 = _directions(model, params, tokenizer, batches[set_name], config)
            result["cosine"][set_name] = cosine(d1, d2)
            dirs, base_names = (d1, d2), set(params)
        elif set(params) != base_names:
            raise InputError(
                "Base and fine-tuned models do not share parameter names.",
                "pass a fine-tune of this base (same architecture).",
            )
        t = time.monotonic()
        values = surface(model, params, dirs[0], dirs[1], coords, batches[set_name], stage, f"{set_name}/{model_name}")
        result["seconds"][f"{set_name}/{model_name}"] = time.monotonic() - t
        result["surfaces"].setdefault(set_name, {})[model_name] = values.tolist()
        result["cross_sections"].setdefault(set_name, {})[model_name] = cross_sections(values)
        del model, params
    for set_name, by_model in result["surfaces"].items():
        result["structural_difference"][set_name] = structural_difference(
            np.array(by_model["base"]), np.array(by_model["finetuned"])
        )
    progress.update(1.0, "landscape done")
    return result


def loss_landscape(
    pair: dict[str, ModelSpec],
    sets: dict[str, list[Example]],
    config: LandscapeConfig = LandscapeConfig(),
    progress: Progress | None = None,
) -> dict:
    """Surfaces for every (set, model), the directions' cosine, the Laplacian structural difference (%)."""
    config.validate()
    for name, examples in sets.items():
        if not examples:
            raise InputError(f"The '{name}' set is empty.", "pass a data set with at least one example.")
    key = {
        "models": {k: fingerprint(v) for k, v in pair.items()},
        "data": {k: data_fingerprint(v[: config.samples]) for k, v in sets.items()},
        "config": asdict(config),
    }
    return memoize("landscape", key, lambda: _compute(pair, sets, config, progress or Progress()))


def command(args, progress: Progress) -> dict:
    """``python -m core landscape``: surfaces, structural differences and each surface's centre loss."""
    config = from_args(LandscapeConfig, args)
    defaults = default_sets(args.seed, config.samples)
    sets = override_sets({"harmful": defaults["harmful"], "benign": defaults["general"]}, args)
    result = loss_landscape(pair_from_args(args, progress), sets, config, progress)
    mid = config.grid // 2
    center = {s: {m: v[mid][mid] for m, v in by.items()} for s, by in result["surfaces"].items()}
    return {**result, "grid": config.grid, "radius": config.radius, "center_loss": center}


register_analysis(
    Analysis(
        "landscape",
        "Loss landscape",
        "gradient-informed 3D loss landscapes and the Laplacian structural difference",
        (LandscapeConfig,),
        command,
        set_files=("harmful", "benign"),
    )
)
