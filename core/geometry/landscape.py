"""Gradient-informed 3D loss landscapes and the Laplacian structural difference
(paper 1, "Curvature-Aware Safety Restoration in LLMs Fine-Tuning", section 2.2 and appendix B.3,
equations 6-8).

Directions (eq. 6): d_k = (g * s_k) / ||g * s_k||, one global L2 norm over all perturbed tensors
(the 2-D attention and MLP weight matrices), g the gradient of the mean per-example loss over
the set's landscape samples and s_k an element-wise standard Gaussian drawn from the direction's
seed (1000, 2000). The paper says "random scaling factors" without naming their law; a Gaussian
is our reading. d_1, d_2 are nearly orthogonal (their cosine is reported), and a coefficient is
a distance in weight space (||alpha d_1|| = |alpha|). Departure: g is taken on the base model
and the same two directions serve both models (the paper's "for each model" is ambiguous): with
one plane for both, the difference of the surfaces is the landscapes' and not the planes'.
``directions="random"`` gives filter-normalised Gaussian directions (Li et al. 2018) instead,
whose coefficients are fractions of each weight row's norm.

Grid (eq. 7): theta_0 + alpha d_1 + beta d_2 for alpha, beta in ``linspace(-r, r, n)`` (n odd, so
theta_0 is the centre), evaluated row by row on one model copy (the paper's memory-saving order).
Every point is computed from theta_0 per tensor in fp32 and cast once to the model's dtype (no
accumulated increments, whose bf16 roundings would drift); theta_0 is copied back bit-exactly.
In bf16 most of a point's per-element steps are below the weights' resolution (on the demo model
the fitted r ~ 4.7 spread over 1.06e8 weights is ~5e-4 per element in RMS, against a bf16 spacing
of ~1e-3 at the RMS weight 0.19), so they round away and a bf16 surface is coarse and driven by
the few large-gradient elements: prefer ``--dtype float32`` (CPU runs are fp32).

Radius (the paper's range is not legible in our text of it): ``radius=0`` fits r per model pair
so that one default serves 135M and 7B models: along d_1 of the benign set (both signs), the
base model's benign loss first reaches (1 + ``rise``) times its value at theta_0 at distance r
(geometric bracketing from 0.005 ||theta_P||, then bisection to 5%; capped at 0.5 ||theta_P||,
theta_P the perturbed weights; ``capped`` is then reported). ``rise=0.5`` (+50%) keeps the grid
inside the basin, where the loss is still a smooth function of the weights, yet far enough out
that the surface's curvature is large against the sample noise of a loss. A positive ``radius``
is used as given.

Structural difference (eq. 8): 100 * (1 - corr(Lap L_base, Lap L_ft)), Pearson's r over grid
points. The paper says only "finite differences on our computed grid"; here Lap is the 5-point
stencil at the (n-2)^2 interior points, the only ones with all four neighbours: any boundary rule
that replicates edge values turns the edge Laplacian into a first difference, so two surfaces
with equal curvature and different slopes would differ by their slopes alone. An interval: the
percentile bootstrap over interior points (they are not independent, so it is optimistic; the
floor below is the yardstick).

Noise floor (``floor=True``, 1.5x the surfaces): the ``samples`` of a set are split into halves
A and B, each model's surface is computed on each half with the same directions, and the
reported surface is their sample-weighted mean (exactly the surface on all samples). Then
``structural_difference_floor`` = max over the two models of SD(L_m^A, L_m^B): the difference
between two landscapes of the same model that differ only in which samples they average, i.e.
what resampling alone gives. Being from half-size batches it over-states the resampling noise of
the full-batch difference (conservative). ``structural_difference_repeats``: the pair's
difference on half A, on half B, and on half A with a second direction pair (seeds 3000, 4000),
next to the two same-model differences.

Defaults, chosen for time (the paper: 32 samples; its grid size is not legible): a 7 x 7 grid
(25 interior Laplacian points) and 8 samples (two halves of 4), one example per forward pass (no
padding), so the default run with its floor (2 models x 2 sets x 3 half-surfaces of 49 points,
about 2 x 10^5 token positions) fits 15 minutes on 2 idle CPU cores for the 135M demo world;
a 9 x 9 grid or 16 samples would not. ``--grid 11 --samples 32`` (and ``--no-floor``) are options.
Losses count the ``content`` tokens and are cut at 256 tokens, as in the correlation analysis
(``core.world.loss``).

Memory (``--direction-memory``, issue 13): stored, theta0, both directions and each set's gradient
are copies of the perturbed weights (about 5 on top of the model); ``regenerate`` recomputes each
direction's tensor when a point is set, keeps theta0 and the gradients in scratch files read one
tensor at a time (``core.base.lean``) and takes the gradient in groups of at most a quarter of the
model's bytes (one backward pass each), for the same bits; ``auto`` (the default) stores when
that fits comfortably in free memory. The answer's ``direction_memory`` says which ran.
"""

from __future__ import annotations

import math
import time
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Callable, ClassVar, Iterator, Mapping

import numpy as np
import torch
from scipy import stats

from core.base import lean, scaleout
from core.base.cache import memoize
from core.base.errors import InputError
from core.base.options import from_args, option
from core.base.progress import Progress
from core.base.scaleout import map_shards
from core.base.stats import bootstrap_interval
from core.base.tensors import cosine, dot64
from core.geometry.correlation import default_sets
from core.geometry.registry import Analysis, register_analysis
from core.world.data import Example, override_sets
from core.world.data import fingerprint as data_fingerprint
from core.world.loss import TOKEN_RULES, encode_batches, per_example_loss
from core.world.model_pair import pair_from_args
from core.world.models import ModelSpec, fingerprint, load_model, load_tokenizer

DIRECTION_SEEDS = (1000, 2000)  # the paper's (B.3)
SECOND_SEEDS = (3000, 4000)  # the repeat with a second direction pair (noise floor)
GRAD_CHUNK = 4
RADIUS_START = 0.005  # first trial radius of the fit, in units of ||theta_P|| along d_1
RADIUS_CAP = 0.5  # largest fitted radius, same units
RADIUS_TOLERANCE = 1.05  # bisection stops when the bracket's hi / lo is at most this
FIT_SETS = ("benign", "general")  # the set the radius is fitted on, if present (else the first)

Directions = dict[str, torch.Tensor]


@dataclass(frozen=True)
class LandscapeConfig:
    quick_minutes: ClassVar[float] = 3  # the quick preset's time with 2 threads on the demo world, floor included
    grid: int = option(
        7,
        "n x n grid points, n odd (interior Laplacian on (n-2)^2)",
        label="Grid points per axis",
        low=5,
        high=51,
        quick=5,
    )
    radius: float = option(
        0.0,
        "coefficients in [-r, r] (gradient directions: weight-space distance); 0 fits r by --rise",
        label="Radius (0: fit)",
        low=0.0,
    )
    rise: float = option(
        0.5,
        "fitted radius: the base model's benign loss at distance r along d1 is (1 + rise) x its loss at the centre",
        label="Loss rise at the fitted radius",
        low=0.01,
        high=10.0,
    )
    samples: int = option(
        8, "samples per loss evaluation (paper: 32)", label="Samples per loss", low=2, high=256, quick=4
    )
    floor: bool = option(True, "noise floor: half-batch, same-model and second-seed differences (1.5x time)")
    tokens: str = option(
        "content", "tokens the loss counts (as in the correlation analysis)", label="Tokens", choices=TOKEN_RULES
    )
    batch_size: int = 1  # no padding: on a CPU a padded position costs as much as a real one
    max_length: int = 256
    directions: str = option(
        "gradient",
        "gradient (paper B.3, eq. 6) or random (filter-normalised, Li et al. 2018)",
        label="Directions",
        choices=("gradient", "random"),
    )
    modules: tuple[str, ...] = option(
        ("self_attn", "mlp"), "comma-separated module kinds to perturb", label="Perturbed modules"
    )
    direction_memory: str = lean.direction_memory_option()

    def validate(self) -> None:
        if self.grid < 5 or self.grid % 2 == 0:
            raise InputError(
                f"--grid {self.grid} must be odd and at least 5 (a centre, and 9+ interior Laplacian points).",
                "use an odd grid such as 7 (the default) or 11.",
            )
        if not self.radius >= 0:
            raise InputError(f"--radius {self.radius} must be 0 (fit) or positive.", "use 0 to fit the radius.")
        if not self.rise > 0:
            raise InputError(f"--rise {self.rise} must be positive.", "use 0.5 (a +50% loss rise, the default).")
        if self.directions not in ("gradient", "random"):
            raise InputError(f"Unknown --directions '{self.directions}'.", "use gradient or random.")
        if self.tokens not in TOKEN_RULES:
            raise InputError(f"Unknown --tokens '{self.tokens}'.", f"use one of {', '.join(TOKEN_RULES)}.")
        if self.samples < (2 if self.floor else 1):
            raise InputError(f"--samples {self.samples} is too small.", "use 8 (the default) or 32 (the paper's).")


# ---------------------------------------------------------------------------- directions (eq. 6)
def perturbed_parameters(model: torch.nn.Module, modules: tuple[str, ...]) -> dict[str, torch.nn.Parameter]:
    """The 2-D weight matrices of the named module kinds (attention and MLP by default)."""
    params = {n: p for n, p in model.named_parameters() if p.ndim == 2 and any(f".{m}." in n for m in modules)}
    if not params:
        raise InputError(
            f"No weight matches modules {list(modules)}.",
            "name module kinds present in the model, e.g. self_attn, mlp.",
        )
    return params


def global_norm(tensors: Mapping[str, torch.Tensor]) -> float:
    """L2 norm of all tensors taken as one vector (accumulated in float64)."""
    return math.sqrt(sum(dot64(t) for t in tensors.values()))


def mean_loss(model, batches: list[dict]) -> float:
    """Mean per-example loss over pre-encoded batches."""
    total, count = 0.0, 0
    with torch.no_grad():
        for batch in batches:
            losses = per_example_loss(model, batch)
            total += losses.sum().item()
            count += losses.numel()
    return total / count


def gradient(
    model, params: dict[str, torch.nn.Parameter], batches: list[dict], group_bytes: int | None = None
) -> Mapping[str, torch.Tensor]:
    """Gradient of the mean per-example loss over the batches, for the given parameters only.
    ``group_bytes`` (the lean path): one backward pass per group of consecutive tensors of at most
    that many bytes, each group's gradient written to a scratch file before the next (the same bits)."""
    if group_bytes is None:
        return _gradient(model, params, batches)
    groups: list[dict[str, torch.nn.Parameter]] = [{}]
    for name, p in params.items():
        if groups[-1] and lean.nbytes([*groups[-1].values(), p]) > group_bytes:
            groups.append({})
        groups[-1][name] = p
    return lean.DiskTensors(params, (item for g in groups for item in _gradient(model, g, batches).items()))


def _gradient(model, params: dict[str, torch.nn.Parameter], batches: list[dict]) -> dict[str, torch.Tensor]:
    for p in model.parameters():
        p.requires_grad_(False)
    for p in params.values():
        p.requires_grad_(True)
        p.grad = None
    n = sum(b["input_ids"].shape[0] for b in batches)
    try:
        for batch in batches:
            for i in range(0, batch["input_ids"].shape[0], GRAD_CHUNK):  # small chunks bound the activations
                chunk = {k: v[i : i + GRAD_CHUNK] for k, v in batch.items()}
                (per_example_loss(model, chunk).sum() / n).backward()
        return {name: p.grad.detach() for name, p in params.items()}  # kept once p.grad is reset
    finally:
        for p in params.values():
            p.grad = None
            p.requires_grad_(False)


def gradient_direction(grads: dict[str, torch.Tensor], seed: int) -> Directions:
    """Eq. 6: (g * s) / ||g * s||, s an element-wise Gaussian from ``seed``, one norm over all tensors."""
    gen = torch.Generator().manual_seed(seed)
    raw = {n: g.float() * torch.randn(g.shape, generator=gen).to(g.device) for n, g in grads.items()}
    norm = global_norm(raw)
    if not norm > 0:
        raise InputError(
            "The loss gradient is zero on the landscape samples.", "use other samples or --directions random."
        )
    return {n: (d / norm).to(grads[n].dtype) for n, d in raw.items()}


def random_direction(
    params: dict[str, torch.Tensor], seed: int, row_norms: dict[str, torch.Tensor] | None = None
) -> Directions:
    """Filter-normalised Gaussian direction (Li et al. 2018): each output row gets the norm of the
    weight row (``row_norms``, default those of ``params``, shape rows x 1)."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name, p in params.items():
        norms = p.detach().norm(dim=1, keepdim=True) if row_norms is None else row_norms[name]
        d = torch.randn(p.shape, generator=gen).to(p.device, p.dtype)
        out[name] = d * (norms / d.norm(dim=1, keepdim=True).clamp_min(1e-12))
    return out


class LazyGradientDirection(lean.LazyDirection):
    """``gradient_direction`` recomputed one tensor at a time (the same bits): the global norm from
    one first pass over the tensors, the Gaussians replayed per tensor."""

    def __init__(self, grads: Mapping[str, torch.Tensor], seed: int):
        super().__init__(grads)
        self.grads, self.noise, total = grads, lean.Gaussians(seed), 0.0
        for n in self.names:
            total += dot64(self._raw(n))
        self.norm = math.sqrt(total)
        if not self.norm > 0:
            raise InputError(
                "The loss gradient is zero on the landscape samples.", "use other samples or --directions random."
            )

    def _raw(self, name: str) -> torch.Tensor:
        g = self.grads[name]
        return self.noise.draw(name, g.shape).to(g.device).mul_(g.float())  # in place: one tensor, same product

    def make(self, name: str) -> torch.Tensor:
        return self._raw(name).div_(self.norm).to(self.grads[name].dtype)


class LazyRandomDirection(lean.LazyDirection):
    """``random_direction`` recomputed one tensor at a time (the same bits)."""

    def __init__(self, params: dict[str, torch.Tensor], seed: int, row_norms: dict[str, torch.Tensor] | None = None):
        super().__init__(params)
        self.like = {n: torch.empty(0, dtype=p.dtype, device=p.device) for n, p in params.items()}
        self.shapes = {n: p.shape for n, p in params.items()}
        own = row_norms is None
        self.norms = {n: p.detach().norm(dim=1, keepdim=True) for n, p in params.items()} if own else row_norms
        self.noise = lean.Gaussians(seed)
        for n in self.names:  # the draws in order, so that each can be replayed alone
            self.noise.draw(n, self.shapes[n])

    def make(self, name: str) -> torch.Tensor:
        d = self.noise.draw(name, self.shapes[name]).to(self.like[name])
        return d * (self.norms[name] / d.norm(dim=1, keepdim=True).clamp_min(1e-12))


# ---------------------------------------------------------------------------- grid (eq. 7)
def set_point(
    params: dict[str, torch.nn.Parameter],
    theta0: Mapping[str, torch.Tensor],
    d1: Mapping[str, torch.Tensor],
    d2: Mapping[str, torch.Tensor] | None,
    a: float,
    b: float = 0.0,
) -> None:
    """Weights = theta0 + a d1 + b d2 (``d2=None``: no second term), computed per tensor in fp32 from
    theta0 and cast once to the weights' dtype: the same closed form at every point, no drift."""
    with torch.no_grad():
        for n, p in params.items():
            direct = p.dtype == torch.float32  # fp32 weights: the sum is written in place
            if direct:
                w = torch.add(theta0[n], d1[n], alpha=a, out=p.data)
            else:  # a fresh fp32 copy (theta0 may itself be fp32: never add into it)
                w = theta0[n].to(torch.float32, copy=True).add_(d1[n], alpha=a)
            if d2 is not None:
                w.add_(d2[n], alpha=b)
            if not direct:
                p.data.copy_(w)


@contextmanager
def restoring(params: dict[str, torch.nn.Parameter], path: str = "stored") -> Iterator[Mapping[str, torch.Tensor]]:
    """Yield a copy of the weights (theta0: clones, or off the device for ``regenerate``) and copy
    it back bit-exactly on leaving (also on error)."""
    theta0 = lean.theta0_copy(params, path)
    try:
        yield theta0
    finally:
        with torch.no_grad():
            for n, p in params.items():
                p.data.copy_(theta0[n])
        lean.close(theta0)


def surface(
    model,
    params,
    d1,
    d2,
    coords: np.ndarray,
    batches: list[dict],
    progress: Progress,
    label: str,
    part: str = "all",
    load: Callable | None = None,
    path: str = "stored",
) -> np.ndarray:
    """Loss on the grid, row by row (row i = coefficient a_i on d1); each row is a partial result.
    With ``load`` (a replica of this model: ``landscape_replica``) and a scale-out session, the
    rows go to Ray workers (``core.base.scaleout``), each computed exactly as here."""
    values = np.full((len(coords), len(coords)), np.nan)

    def report(i: int, row: list[float]) -> tuple[str, dict]:
        values[i] = row
        if not np.all(np.isfinite(values[i])):
            raise InputError(
                f"NaN or infinite loss on the {label} landscape at row {i}.", "use a smaller --radius or float32."
            )
        shown = {"label": label, "part": part, "row": i, "values": values[i].tolist(), "coords": coords.tolist()}
        return f"{label} ({part}): row {i + 1}/{len(coords)}", shown

    with restoring(params, path) as theta0:
        shared = (d1, d2, coords, batches, path)
        map_shards(_grid_row, range(len(coords)), shared, (model, params, theta0), load, progress, report)
    return values


def landscape_replica(spec: ModelSpec, modules: tuple[str, ...]) -> tuple:
    """What a worker needs for grid rows: the merged model, its perturbed weights and theta0."""
    model = load_model(spec, merge=True)
    params = perturbed_parameters(model, modules)
    return model, params, {n: p.detach().clone() for n, p in params.items()}


def _grid_row(replica: tuple, shared: tuple, i: int) -> list[float]:
    """Row i of the grid: the loss at theta0 + a_i d1 + b_j d2 for every b_j. The row's base
    theta0 + a_i d1 is computed once (fp32) and each point adds b_j d2 to it: the same operations in
    the same order as ``set_point``, so the same bits, at half the memory passes per point (and on
    the lean path half the direction tensors regenerated per point)."""
    model, params, theta0 = replica
    d1, d2, coords, batches, path = shared
    base = _row_base(params, theta0, d1, float(coords[i]), path)
    row = []
    for b in coords:
        set_point(params, base, d2, None, float(b))
        row.append(mean_loss(model, batches))
    lean.close(base)
    return row


def _row_base(params, theta0, d1, a: float, path: str) -> Mapping[str, torch.Tensor]:
    """theta0 + a d1 in fp32: in memory (``stored``), or off the device one tensor at a time."""
    items = ((n, torch.add(theta0[n].float(), d1[n], alpha=a)) for n in params)
    if path == "stored":
        return dict(items)
    specs = {n: torch.empty((), device=p.device).expand(p.shape) for n, p in params.items()}  # fp32, no storage
    return lean.off_device(specs, items)


# ---------------------------------------------------------------------------- radius
def fit_radius(
    loss_along: Callable[[float], float],
    loss0: float,
    rise: float,
    start: float,
    cap: float,
    tolerance: float = RADIUS_TOLERANCE,
) -> dict:
    """The distance r at which max(loss(+r), loss(-r)) first reaches (1 + rise) * loss0: geometric
    bracketing from ``start`` (doubling up to ``cap``, or halving), then bisection in log r until
    the bracket's ratio is at most ``tolerance``; r is the bracket's geometric mean. A NaN or
    infinite loss counts as risen."""
    target, calls = (1.0 + rise) * loss0, [0]

    def risen(r: float) -> bool:
        for t in (r, -r):
            calls[0] += 1
            value = loss_along(t)
            if not math.isfinite(value) or value >= target:
                return True
        return False

    lo, hi, r = 0.0, math.inf, min(start, cap)
    while lo == 0.0 and r > start * 2.0**-30:  # below start: halve until the rise is gone
        if not risen(r):
            lo = r
        else:
            hi, r = r, r / 2
    while hi == math.inf:  # above: double until the rise is reached or the cap
        if lo >= cap:
            return {"radius": cap, "capped": True, "evaluations": calls[0], "target_loss": target}
        r = min(2 * r, cap)
        if risen(r):
            hi = r
        else:
            lo = r
    while lo > 0 and hi / lo > tolerance:
        mid = math.sqrt(lo * hi)
        lo, hi = (lo, mid) if risen(mid) else (mid, hi)
    return {
        "radius": math.sqrt(lo * hi) if lo > 0 else hi,
        "capped": False,
        "evaluations": calls[0],
        "target_loss": target,
    }


def _fit(
    model, params, d1: Mapping, batches: list[dict], config: LandscapeConfig, progress: Progress, path: str
) -> dict:
    """Fit the radius along d1 on the base model (see the module docstring)."""
    scale = global_norm(params) / global_norm(d1)  # the step that moves the weights by ||theta_P||
    with restoring(params, path) as theta0:
        loss0 = mean_loss(model, batches)

        def loss_along(t: float) -> float:
            set_point(params, theta0, d1, None, t)
            value = mean_loss(model, batches)
            progress.update(0.5, f"radius fit: loss {value:.3f} at {t:+.4g} (centre {loss0:.3f})")
            return value

        fit = fit_radius(loss_along, loss0, config.rise, RADIUS_START * scale, RADIUS_CAP * scale)
    return {**fit, "centre_loss": loss0, "rise": config.rise}


# ---------------------------------------------------------------------------- structural difference (eq. 8)
def laplacian(values: np.ndarray, spacing: float = 1.0) -> np.ndarray:
    """5-point finite-difference Laplacian at the interior points (all four neighbours exist)."""
    z = np.asarray(values, dtype=float)
    return (z[2:, 1:-1] + z[:-2, 1:-1] + z[1:-1, 2:] + z[1:-1, :-2] - 4 * z[1:-1, 1:-1]) / spacing**2


def _difference(lb: np.ndarray, lf: np.ndarray) -> float:
    if len(lb) < 2 or np.std(lb) == 0 or np.std(lf) == 0:
        return float("nan")
    return float(100.0 * (1.0 - stats.pearsonr(lb, lf).statistic))


def structural_difference(base: np.ndarray, finetuned: np.ndarray) -> float:
    """Eq. 8: 100 * (1 - Pearson r of the two surfaces' interior Laplacians); NaN if one is flat."""
    return _difference(laplacian(base).ravel(), laplacian(finetuned).ravel())


def difference_interval(base: np.ndarray, finetuned: np.ndarray) -> tuple[float, float]:
    """95% percentile-bootstrap interval of eq. 8 over the interior grid points."""
    lb, lf = laplacian(base).ravel(), laplacian(finetuned).ravel()
    return bootstrap_interval(np.arange(len(lb)), lambda idx: _difference(lb[idx.astype(int)], lf[idx.astype(int)]))


def cross_sections(values: np.ndarray) -> dict[str, list[float]]:
    """Loss along each direction through the origin (Figure 6)."""
    c = values.shape[0] // 2
    return {"d1": values[:, c].tolist(), "d2": values[c, :].tolist()}


# ---------------------------------------------------------------------------- the run
def _batches(tokenizer, examples: list[Example], config: LandscapeConfig) -> list[dict]:
    return encode_batches(tokenizer, examples, config.batch_size, config.max_length, config.tokens)


def _parts(examples: list[Example], config: LandscapeConfig) -> dict[str, list[Example]]:
    """The samples of one set: one part ("all"), or halves "a" and "b" for the floor."""
    ex = examples[: config.samples]
    if not config.floor:
        return {"all": ex}
    if len(ex) < 2:
        raise InputError(
            f"The noise floor needs 2 or more samples per set, got {len(ex)}.", "add examples or --no-floor."
        )
    return {"a": ex[: len(ex) // 2], "b": ex[len(ex) // 2 :]}


def _directions(params, reference, seeds: tuple[int, int], config: LandscapeConfig, path: str) -> tuple:
    """The direction pair of ``seeds``: from the base's gradient, or random with the base's row
    norms; stored, or recomputed per tensor when read (``regenerate``)."""
    lazy = path == "regenerate"
    if config.directions == "random":
        make = LazyRandomDirection if lazy else random_direction
        return make(params, seeds[0], reference), make(params, seeds[1], reference)
    make = LazyGradientDirection if lazy else gradient_direction
    return make(reference, seeds[0]), make(reference, seeds[1])


def check_memory_for_workers(direction_memory: str, scaled: bool) -> None:
    """Ray workers get the directions by value; regenerated ones read this machine's scratch files,
    so ``regenerate`` with workers is a one-line error (checked before any model loads, and here)."""
    if scaled and direction_memory == "regenerate":
        raise InputError(
            "--direction-memory regenerate cannot be shared with Ray workers (its directions live in this "
            "machine's scratch files).",
            "use --direction-memory auto or stored with --workers, or --workers 1.",
        )


def _memory_path(model, params, n_sets: int, config: LandscapeConfig) -> str:
    """Stored or regenerated directions: what ``--direction-memory`` says, or (auto) stored when
    theta0, the two directions, the sets' gradients, a transient copy and the grid row's fp32 base
    fit comfortably; always stored when rows go to Ray workers."""
    if scaleout.active():
        check_memory_for_workers(config.direction_memory, scaled=True)
        return "stored"
    copies = 4 + (n_sets if config.directions == "gradient" else 0)
    device = next(iter(params.values())).device
    row_base = 4 * sum(p.numel() for p in params.values())
    return lean.choose_path(config.direction_memory, copies * lean.nbytes(params.values()) + row_base, device)


def _gradient_group(model) -> int:
    """Lean gradients: groups of at most a quarter of the model's weight bytes."""
    return lean.nbytes(model.parameters()) // 4


def _jobs(config: LandscapeConfig) -> dict[tuple[int, int], list[tuple[str, str]]]:
    """Per direction pair, the (part, batch) surfaces of one (set, model)."""
    if not config.floor:
        return {DIRECTION_SEEDS: [("all", "all")]}
    return {DIRECTION_SEEDS: [("a", "a"), ("b", "b")], SECOND_SEEDS: [("seeds", "a")]}


def _everything(parts: dict[str, list[dict]]) -> list[dict]:
    return [b for batches in parts.values() for b in batches]


def _prepare(model, params, data: dict, config: LandscapeConfig, state: dict, progress: Progress) -> None:
    """On the base model: what defines each set's directions (gradient or row norms), then the radius."""
    path = state["memory"] = _memory_path(model, params, len(data), config)
    group = _gradient_group(model) if path == "regenerate" else None
    for k, (set_name, parts) in enumerate(data.items()):
        if config.directions == "random":
            state["reference"][set_name] = {n: p.detach().norm(dim=1, keepdim=True) for n, p in params.items()}
        else:
            progress.update(k / (len(data) + 1), f"{set_name}: gradient for the directions")
            state["reference"][set_name] = gradient(model, params, _everything(parts), group)
    if config.radius > 0:
        state["radius"] = {"radius": config.radius, "fitted": False}
        return
    fit_set, t = next((s for s in FIT_SETS if s in data), next(iter(data))), time.monotonic()
    d1, _ = _directions(params, state["reference"][fit_set], DIRECTION_SEEDS, config, path)
    stage = progress.stage(len(data) / (len(data) + 1), 1.0)
    fit = _fit(model, params, d1, _everything(data[fit_set]), config, stage, path)
    state["radius"] = {**fit, "fitted": True, "set": fit_set, "seconds": time.monotonic() - t}


def _set_surfaces(name, spec, model, params, set_name, parts, config, state, progress) -> dict:
    """The surfaces of one (set, model), keyed by part."""
    radius = state["radius"]["radius"]
    coords = np.linspace(-radius, radius, config.grid)
    jobs, out = _jobs(config), {}
    n_jobs, done = sum(len(v) for v in jobs.values()), 0
    for seeds, surfaces in jobs.items():
        d1 = d2 = None  # the previous pair goes before the next is made
        d1, d2 = _directions(params, state["reference"][set_name], seeds, config, state["memory"])
        if name == "base":
            state["cosine"].setdefault(set_name, {})[str(seeds)] = cosine(d1, d2)
        for part, batch in surfaces:
            t, label = time.monotonic(), f"{set_name}/{name}"
            stage = progress.stage(done / n_jobs, (done + 1) / n_jobs)
            load = partial(landscape_replica, spec, config.modules)
            out[part] = surface(
                model, params, d1, d2, coords, parts[batch], stage, label, part, load=load, path=state["memory"]
            )
            state["seconds"][f"{label}/{part}"] = time.monotonic() - t
            done += 1
    return out


def _model_pass(name: str, spec: ModelSpec, data: dict, config: LandscapeConfig, state: dict, progress) -> dict:
    """All surfaces of one model, keyed by (set, part); on the base first the directions and radius."""
    model = load_model(spec, merge=True)  # one model in memory at a time
    params = perturbed_parameters(model, config.modules)
    if name == "base":
        state["names"] = set(params)
        _prepare(model, params, data, config, state, progress.stage(0.0, 0.1))
        progress = progress.stage(0.1, 1.0)
    elif set(params) != state["names"]:
        raise InputError(
            "Base and fine-tuned models do not share parameter names.",
            "pass a fine-tune of this base (same architecture).",
        )
    out = {}
    for k, (set_name, parts) in enumerate(data.items()):
        stage = progress.stage(k / len(data), (k + 1) / len(data))
        for part, values in _set_surfaces(name, spec, model, params, set_name, parts, config, state, stage).items():
            out[set_name, part] = values
    return out


def _pooled(by_part: dict[str, np.ndarray], sizes: dict[str, int]) -> np.ndarray:
    """The surface over all samples: the halves' means weighted by their sizes."""
    if "all" in by_part:
        return by_part["all"]
    return (sizes["a"] * by_part["a"] + sizes["b"] * by_part["b"]) / (sizes["a"] + sizes["b"])


def _floor(surf: dict[tuple[str, str], np.ndarray]) -> tuple[float, dict[str, float]]:
    """The same-model floor and the pair's repeats for one set (see the module docstring)."""
    sd = structural_difference
    repeats = {
        "half_a": sd(surf["base", "a"], surf["finetuned", "a"]),
        "half_b": sd(surf["base", "b"], surf["finetuned", "b"]),
        "half_a_second_seeds": sd(surf["base", "seeds"], surf["finetuned", "seeds"]),
        "same_model_base": sd(surf["base", "a"], surf["base", "b"]),
        "same_model_finetuned": sd(surf["finetuned", "a"], surf["finetuned", "b"]),
    }
    same = [repeats["same_model_base"], repeats["same_model_finetuned"]]
    return (float(np.nanmax(same)) if not np.all(np.isnan(same)) else float("nan")), repeats


def _compute(
    pair: dict[str, ModelSpec], sets: dict[str, list[Example]], config: LandscapeConfig, progress: Progress
) -> dict:
    tokenizer = load_tokenizer(pair["base"])
    parts = {s: _parts(v, config) for s, v in sets.items()}
    sizes = {s: {p: len(ex) for p, ex in by.items()} for s, by in parts.items()}
    data = {s: {p: _batches(tokenizer, ex, config) for p, ex in by.items()} for s, by in parts.items()}
    order = ["base"] + [m for m in pair if m != "base"]  # the base defines directions and radius
    state: dict = {"cosine": {}, "seconds": {}, "reference": {}}
    raw: dict[str, dict] = {}
    for k, model_name in enumerate(order):
        stage = progress.stage(k / len(order), (k + 1) / len(order))
        for (s, part), values in _model_pass(model_name, pair[model_name], data, config, state, stage).items():
            raw.setdefault(s, {})[model_name, part] = values
    state.pop("reference")
    progress.update(1.0, "landscape done")
    return _answer(raw, sizes, order, config, state)


def _answer(raw: dict, sizes: dict, order: list[str], config: LandscapeConfig, state: dict) -> dict:
    radius = state["radius"]["radius"]
    surfaces = {
        s: {m: _pooled({p: v for (mm, p), v in by.items() if mm == m and p != "seeds"}, sizes[s]) for m in order}
        for s, by in raw.items()
    }
    result: dict = {
        "coords": np.linspace(-radius, radius, config.grid).tolist(),
        "radius": radius,
        "radius_fit": state["radius"],
        "coefficient_units": "weight-space distance" if config.directions == "gradient" else "fraction of row norm",
        "surfaces": {s: {m: v.tolist() for m, v in by.items()} for s, by in surfaces.items()},
        "cross_sections": {s: {m: cross_sections(v) for m, v in by.items()} for s, by in surfaces.items()},
        "cosine": {s: c[str(DIRECTION_SEEDS)] for s, c in state["cosine"].items()},
        "cosine_second_seeds": {s: c.get(str(SECOND_SEEDS)) for s, c in state["cosine"].items()},
        "samples": sizes,
        "structural_difference": {},
        "structural_difference_interval": {},
        "structural_difference_floor": {},
        "structural_difference_repeats": {},
        "seconds": state["seconds"],
        "direction_memory": state["memory"],
    }
    for s, by in surfaces.items():
        if "finetuned" not in by:
            continue
        result["structural_difference"][s] = structural_difference(by["base"], by["finetuned"])
        result["structural_difference_interval"][s] = list(difference_interval(by["base"], by["finetuned"]))
        if config.floor:
            floor, repeats = _floor(raw[s])
            result["structural_difference_floor"][s] = floor
            result["structural_difference_repeats"][s] = repeats
    return result


def loss_landscape(
    pair: dict[str, ModelSpec],
    sets: dict[str, list[Example]],
    config: LandscapeConfig = LandscapeConfig(),
    progress: Progress | None = None,
) -> dict:
    """Surfaces for every (set, model), the radius, the directions' cosine, the Laplacian structural
    difference (%) with its bootstrap interval, its noise floor and repeats."""
    config.validate()
    for name, examples in sets.items():
        if not examples:
            raise InputError(f"The '{name}' set is empty.", "pass a data set with at least one example.")
    key = {
        "models": {k: fingerprint(v) for k, v in pair.items()},
        "data": {k: data_fingerprint(v[: config.samples]) for k, v in sets.items()},
        "config": lean.answer_config(config),
    }
    return memoize("landscape-v2", key, lambda: _compute(pair, sets, config, progress or Progress()))


def command(args, progress: Progress) -> dict:
    """``python -m core landscape``: surfaces, structural differences with floors, each surface's centre loss."""
    config = from_args(LandscapeConfig, args)
    defaults = default_sets(args.seed, config.samples)
    sets = override_sets({"harmful": defaults["harmful"], "benign": defaults["general"]}, args)
    result = loss_landscape(pair_from_args(args, progress), sets, config, progress)
    mid = config.grid // 2
    center = {s: {m: v[mid][mid] for m, v in by.items()} for s, by in result["surfaces"].items()}
    return {**result, "grid": config.grid, "center_loss": center}


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
