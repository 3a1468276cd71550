"""Curvature of the safety loss and the alignment-instability condition (paper 3, "The Geometry
of Alignment Collapse").

* Hessian-vector products of a loss by double backward (PyHessian's method; ``create_graph``
  through the loss, then a second ``autograd.grad``), restricted to a parameter subset: the
  LoRA matrices of a fine-tune, or weights whose names contain given substrings.
* Top-k eigenpairs by Lanczos: ``scipy.sparse.linalg.eigsh`` over a ``LinearOperator`` whose
  matvec is one Hessian-vector product.
* The trace by Hutchinson's estimator (Rademacher probes), for spectral concentration.
* Curvature coupling: the share of the fine-tuning (task) gradient inside the top-k safety
  eigenspace, ||V_k^T g||^2 / ||g||^2, and its angle to that subspace.
* The three conditions (low-dimensional safety subspace, sharp curvature, non-zero coupling),
  each with its value and a documented threshold.
* A drift monitor: the alignment loss on a held-out safety probe recorded during a LoRA
  fine-tune, with power laws fitted in training time (free exponent, t^2, t^4) and R^2.

The safety (alignment) loss is the cross-entropy of refusals on harmful prompts
(``core.world.data.safety_probe``): it rises as the model drifts away from refusing.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
from scipy.sparse.linalg import ArpackNoConvergence, LinearOperator, eigsh
from torch.nn.attention import SDPBackend, sdpa_kernel

from core.base.cache import memoize
from core.base.errors import InputError
from core.base.options import from_args, option
from core.base.progress import Progress
from core.geometry.registry import Analysis, register_analysis
from core.world.data import Example, safety_probe, task_examples
from core.world.data import fingerprint as data_fingerprint
from core.world.loss import encode_batches, per_example_loss
from core.world.model_pair import pair_from_args
from core.world.models import ModelSpec, fingerprint, load_model, load_tokenizer
from core.world.training import SFTConfig, lora_sft


@dataclass(frozen=True)
class CurvatureConfig:
    k: int = option(8, "top eigenpairs by Lanczos", label="Top eigenpairs k", low=1, high=64)
    params: str = option(
        "lora", "'lora' or comma-separated parameter-name parts, e.g. layers.20.mlp", label="Parameters"
    )
    samples: int = option(
        8,
        "examples in the safety and task losses (one HVP ~10 s on 2 cores)",
        label="Examples in each loss",
        low=1,
        high=256,
    )
    batch_size: int = 8
    max_length: int = 160
    tol: float = option(1e-3, "Lanczos relative tolerance", label="Lanczos tolerance")
    maxiter: int = option(20, "Lanczos restarts before returning the converged pairs", label="Lanczos restarts")
    trace_probes: int = 8  # Hutchinson probes
    concentration_threshold: float = 0.5  # top-k share of the trace that counts as low-dimensional
    sharpness_threshold: float = 100.0  # lambda_1 / mean eigenvalue that counts as sharp
    coupling_threshold: float = 0.01  # share of the task gradient in the top-k subspace


def select_parameters(model: torch.nn.Module, which: str) -> dict[str, torch.nn.Parameter]:
    """The parameter subset the Hessian is restricted to ('lora' or name substrings)."""
    keys = ["lora_"] if which == "lora" else [k.strip() for k in which.split(",") if k.strip()]
    chosen = {n: p for n, p in model.named_parameters() if any(k in n for k in keys)}
    if not chosen:
        hint = "pass a LoRA fine-tune (--finetuned adapter) or --params with name parts such as layers.20.mlp"
        raise InputError(f"Parameter subset '{which}' matches no weight of the model.", hint + ".")
    return chosen


class HessianOperator:
    """H v for one loss on fixed batches, over a parameter subset, as float64 numpy vectors."""

    def __init__(
        self,
        model: torch.nn.Module,
        params: dict[str, torch.nn.Parameter],
        batches: list[dict],
        progress: Progress | None = None,
    ):
        self.model, self.names = model, list(params)
        self.progress, self.expected_calls = progress or Progress(), 1
        self.params = [params[n] for n in self.names]
        self.batches = batches
        self.total = sum(b["input_ids"].shape[0] for b in batches)
        self.size = sum(p.numel() for p in self.params)
        self.calls = 0
        for p in model.parameters():
            p.requires_grad_(False)
        for p in self.params:
            p.requires_grad_(True)

    def _split(self, vec: np.ndarray) -> list[torch.Tensor]:
        out, start = [], 0
        for p in self.params:
            out.append(torch.from_numpy(vec[start : start + p.numel()]).to(p.device, p.dtype).view_as(p))
            start += p.numel()
        return out

    @staticmethod
    def _flat(tensors) -> np.ndarray:
        return torch.cat([t.detach().reshape(-1).double().cpu() for t in tensors]).numpy()

    def loss(self, batch: dict) -> torch.Tensor:
        return per_example_loss(self.model, batch).sum() / self.total

    def gradient(self) -> np.ndarray:
        grads = [torch.zeros_like(p) for p in self.params]
        for batch in self.batches:
            for acc, g in zip(grads, torch.autograd.grad(self.loss(batch), self.params)):
                acc += g
        return self._flat(grads)

    def matvec(self, vec: np.ndarray) -> np.ndarray:
        self.calls += 1
        self.progress.update(min(0.95, self.calls / self.expected_calls), f"Hessian-vector product {self.calls}")
        v = self._split(np.asarray(vec, dtype=np.float64).reshape(-1))
        out = [torch.zeros_like(p) for p in self.params]
        # The fused attention kernels have no double backward; the math kernel is plain autograd ops.
        with sdpa_kernel(SDPBackend.MATH):
            self._accumulate_hvp(v, out)
        return self._flat(out)

    def _accumulate_hvp(self, v: list[torch.Tensor], out: list[torch.Tensor]) -> None:
        for batch in self.batches:
            grads = torch.autograd.grad(self.loss(batch), self.params, create_graph=True)
            dot = sum((g * vi).sum() for g, vi in zip(grads, v))
            for acc, h in zip(out, torch.autograd.grad(dot, self.params)):
                acc += h

    def operator(self) -> LinearOperator:
        return LinearOperator((self.size, self.size), matvec=self.matvec, dtype=np.float64)


def top_eigenpairs(op: HessianOperator, k: int, tol: float, maxiter: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """Largest-algebraic k eigenvalues (descending) and eigenvectors by implicitly restarted Lanczos.

    ``maxiter`` caps the restarts; if ARPACK has not converged by then, the Ritz pairs it has
    converged are returned (each HVP costs a forward and a double backward).
    """
    if not 1 <= k < op.size:
        raise InputError(
            f"--k {k} must be between 1 and the subset size minus one ({op.size - 1}).",
            "use a smaller k or a larger parameter subset.",
        )
    ncv = min(op.size, max(2 * k + 1, 20))
    op.expected_calls = op.calls + 3 * ncv  # a typical Lanczos run on these spectra; only for the bar
    try:
        vals, vecs = eigsh(
            op.operator(),
            k=k,
            which="LA",
            tol=tol,
            ncv=ncv,
            maxiter=maxiter,
            v0=np.random.default_rng(0).standard_normal(op.size),
        )
    except ArpackNoConvergence as err:
        if len(err.eigenvalues) == 0:
            raise InputError(
                f"Lanczos found no converged eigenvalue in {maxiter} restarts.",
                "raise --maxiter or --tol, or use fewer samples.",
            ) from None
        vals, vecs = err.eigenvalues, err.eigenvectors
    if not np.all(np.isfinite(vals)):
        raise InputError(
            "The Hessian spectrum has NaN or infinite values (NaN losses).",
            "use float32 and check the data for empty examples.",
        )
    order = np.argsort(vals)[::-1]
    return vals[order], vecs[:, order]


def hutchinson_trace(op: HessianOperator, probes: int, seed: int = 0) -> float:
    """tr(H) ~ mean of z^T H z over Rademacher z."""
    rng = np.random.default_rng(seed)
    vals = [float(z @ op.matvec(z)) for z in (rng.choice([-1.0, 1.0], op.size) for _ in range(probes))]
    return float(np.mean(vals))


def coupling(task_gradient: np.ndarray, eigenvectors: np.ndarray) -> dict[str, float]:
    """Share of the task gradient in the span of the eigenvectors, and the angle to that span."""
    norm2 = float(task_gradient @ task_gradient)
    if norm2 == 0:
        return {"share": 0.0, "angle_deg": 90.0, "gradient_norm": 0.0}
    proj = eigenvectors.T @ task_gradient
    share = float(proj @ proj) / norm2
    return {
        "share": share,
        "angle_deg": math.degrees(math.acos(min(1.0, math.sqrt(share)))),
        "gradient_norm": math.sqrt(norm2),
    }


def conditions(eigenvalues: np.ndarray, trace: float, n_params: int, couple: dict, config: CurvatureConfig) -> dict:
    """The alignment-instability condition's three parts, each with value, threshold and verdict."""
    top = float(np.sum(eigenvalues))
    concentration = top / trace if trace > 0 else float("nan")
    mean_eig = trace / n_params
    sharpness = float(eigenvalues[0]) / mean_eig if mean_eig > 0 else float("nan")
    parts = {
        "low_dimensional": {
            "value": concentration,
            "threshold": config.concentration_threshold,
            "holds": bool(concentration >= config.concentration_threshold),
            "what": f"share of tr(H) in the top {len(eigenvalues)} eigenvalues",
        },
        "sharp_curvature": {
            "value": sharpness,
            "threshold": config.sharpness_threshold,
            "holds": bool(sharpness >= config.sharpness_threshold),
            "what": "lambda_1 / mean eigenvalue (tr(H)/n)",
            "lambda_1": float(eigenvalues[0]),
        },
        "coupling": {
            "value": couple["share"],
            "threshold": config.coupling_threshold,
            "holds": bool(couple["share"] >= config.coupling_threshold),
            "what": "share of the task gradient in the top-k safety eigenspace",
            "angle_deg": couple["angle_deg"],
        },
    }
    parts["all_hold"] = all(p["holds"] for p in parts.values())
    return parts


def _encoded(tokenizer, examples: list[Example], config: CurvatureConfig) -> list[dict]:
    return encode_batches(tokenizer, examples[: config.samples], config.batch_size, config.max_length)


def _compute(
    spec: ModelSpec, safety: list[Example], task: list[Example], config: CurvatureConfig, progress: Progress
) -> dict:
    model, tokenizer = load_model(spec), load_tokenizer(spec)
    params = select_parameters(model, config.params)
    safety_op = HessianOperator(model, params, _encoded(tokenizer, safety, config), progress.stage(0.0, 0.6))
    vals, vecs = top_eigenpairs(safety_op, config.k, config.tol, config.maxiter)
    progress.update(
        0.6,
        f"top eigenvalue {vals[0]:.4g} after {safety_op.calls} Hessian-vector products",
        {"eigenvalues": vals.tolist()},
    )
    lanczos_calls = safety_op.calls
    safety_op.progress, safety_op.expected_calls, safety_op.calls = progress.stage(0.6, 0.75), config.trace_probes, 0
    trace = hutchinson_trace(safety_op, config.trace_probes)
    task_op = HessianOperator(model, params, _encoded(tokenizer, task, config), progress.stage(0.75, 1.0))
    couple = coupling(task_op.gradient(), vecs)
    task_vals, _ = top_eigenpairs(task_op, 1, config.tol, config.maxiter)
    progress.update(1.0, "curvature done")
    return {
        "n_params": safety_op.size,
        "parameter_names": list(params)[:50],
        "safety_eigenvalues": vals.tolist(),
        "task_eigenvalues": task_vals.tolist(),
        "safety_trace": trace,
        "coupling": couple,
        "conditions": conditions(vals, trace, safety_op.size, couple, config),
        "hvp_calls": {"safety_lanczos": lanczos_calls, "safety_trace": safety_op.calls, "task": task_op.calls},
    }


def curvature(
    spec: ModelSpec,
    safety: list[Example],
    task: list[Example],
    config: CurvatureConfig = CurvatureConfig(),
    progress: Progress | None = None,
) -> dict:
    """Safety-Hessian spectrum, coupling with the task gradient and the three conditions (cached)."""
    if not safety or not task:
        raise InputError("The safety or task set is empty.", "pass data sets with at least one example each.")
    key = {
        "model": fingerprint(spec),
        "safety": data_fingerprint(safety[: config.samples]),
        "task": data_fingerprint(task[: config.samples]),
        "config": asdict(config),
    }
    return memoize("curvature", key, lambda: _compute(spec, safety, task, config, progress or Progress()))


def fit_power_laws(steps: list[int], losses: list[float]) -> dict[str, dict[str, float]]:
    """Fit dL(t) = L(t) - L(0) ~ kappa * t^p: free p (log-log least squares), p = 2 and p = 4; R^2 each."""
    t = np.asarray(steps[1:], dtype=float)
    d = np.asarray(losses[1:], dtype=float) - losses[0]
    out: dict[str, dict[str, float]] = {}

    def r2(pred: np.ndarray) -> float:
        ss_tot = float(np.sum((d - d.mean()) ** 2))
        return 1.0 - float(np.sum((d - pred) ** 2)) / ss_tot if ss_tot > 0 else float("nan")

    for p in (2.0, 4.0):
        kappa = float(np.sum(d * t**p) / np.sum(t ** (2 * p)))
        out[f"t^{int(p)}"] = {"exponent": p, "kappa": kappa, "r2": r2(kappa * t**p)}
    pos = d > 0
    if pos.sum() >= 2:
        slope, intercept = np.polyfit(np.log(t[pos]), np.log(d[pos]), 1)
        out["free"] = {
            "exponent": float(slope),
            "kappa": float(math.exp(intercept)),
            "r2": r2(math.exp(intercept) * t**slope),
        }
    else:
        out["free"] = {"exponent": float("nan"), "kappa": float("nan"), "r2": float("nan")}
    return out


@dataclass(frozen=True)
class DriftConfig:
    steps: int = option(
        40,
        "steps of the benign LoRA fine-tune the drift monitor watches (0: skip)",
        label="Drift-monitor steps (0: skip)",
        flag="drift_steps",
        low=0,
        high=1000,
    )
    every: int = option(
        4, "probe the alignment loss every this many steps", label="Probe every (steps)", low=1, high=100
    )
    batch_size: int = 8
    lr: float = 1e-3
    rank: int = 8
    probe_samples: int = 32
    autocast: bool = False


def drift_monitor(
    spec: ModelSpec,
    train: list[Example],
    probe: list[Example],
    config: DriftConfig = DriftConfig(),
    progress: Progress | None = None,
) -> dict:
    """Fine-tune ``spec`` with LoRA on ``train``, recording the alignment loss on ``probe``; fit power laws."""
    if not train or not probe:
        raise InputError("The drift monitor needs a training set and a safety probe.", "pass non-empty data sets.")
    if config.every < 1 or config.steps < 2 * config.every:
        raise InputError(
            f"--every {config.every} with --steps {config.steps} gives too few probe points.",
            "use every >= 1 and steps >= 2 * every.",
        )
    progress = progress or Progress()

    def compute() -> dict:
        tokenizer = load_tokenizer(spec)
        batches = encode_batches(tokenizer, probe[: config.probe_samples], 8)
        record: dict[str, list] = {"steps": [], "alignment_loss": []}

        def on_step(step: int, model) -> None:
            if step % config.every:
                return
            model.eval()
            with torch.no_grad():
                losses = torch.cat([per_example_loss(model, b) for b in batches])
            model.train()
            record["steps"].append(step)
            record["alignment_loss"].append(float(losses.mean()))
            progress.update(
                step / config.steps, f"step {step}: alignment loss {record['alignment_loss'][-1]:.4f}", dict(record)
            )

        sft = SFTConfig(
            steps=config.steps, batch_size=config.batch_size, lr=config.lr, rank=config.rank, autocast=config.autocast
        )
        result = lora_sft(load_model(spec), tokenizer, train, sft, None, on_step)
        record["train_loss"] = result.losses
        record["fits"] = fit_power_laws(record["steps"], record["alignment_loss"])
        return record

    key = {
        "model": fingerprint(spec),
        "train": data_fingerprint(train),
        "probe": data_fingerprint(probe[: config.probe_samples]),
        "config": asdict(config),
    }
    return memoize("drift", key, compute)


def command(args, progress: Progress) -> dict:
    """``python -m core curvature``: spectrum, coupling and conditions, then the drift monitor."""
    pair = pair_from_args(args, progress)
    config, drift_config = from_args(CurvatureConfig, args), from_args(DriftConfig, args)
    safety, task = safety_probe("curvature", args.seed), task_examples("train", config.samples, args.seed)
    result = curvature(pair["finetuned"], safety, task, config, progress.stage(0, 0.5))
    out = {k: v for k, v in result.items() if k != "parameter_names"}
    if drift_config.steps:
        train, probe = task_examples("train", 400, args.seed), safety_probe("eval", args.seed)
        drift = drift_monitor(pair["base"], train, probe, drift_config, progress.stage(0.5, 1.0))
        out["drift"] = {"steps": drift["steps"], "alignment_loss": drift["alignment_loss"], "fits": drift["fits"]}
    return out


register_analysis(
    Analysis(
        "curvature",
        "Curvature",
        "safety-Hessian spectrum, curvature coupling, alignment-instability conditions, drift monitor",
        (CurvatureConfig, DriftConfig),
        command,
    )
)
