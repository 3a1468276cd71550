"""Curvature-aware safety restoration (paper 1, "Curvature-Aware Safety Restoration in LLMs
Fine-Tuning", section 3, appendix B.1-B.2) and its first-order baseline, over LoRA parameters.

Equation 5, the influence update: raise the forget loss along the gradient preconditioned by the
inverse Hessian, ``theta <- theta + eta * H^-1 grad L_forget(theta)``, with ``H^-1`` an L-BFGS
approximation built from a *mixed curvature set* (a forget subset disjoint from the forget set,
and two disjoint retain subsets).

* ``curvature_pairs`` (B.1): each pair comes from a probe step ``s = -lr * g`` on one curvature
  subset (gradient accumulated over its batch), learning rates cycling over 0.001, 0.002,
  0.005, ``y = g(theta + s) - g(theta)``. Filters: pairs with insufficient curvature are
  rejected, negative curvature is damped, degenerate norms are dropped, and each pair is scaled
  so that ``||s|| = 1`` before storing (this keeps ``y ~ H s``). A trust region bounds the probe
  steps; the reduction ratio decides whether the probe moves on and resizes the region. Probe
  moves are exploratory: theta returns to where the pairs were built.
* ``lbfgs_direction`` (B.2): the two-loop recursion for ``(H + lambda I)^-1 g``; the L2
  regularisation of the update is folded in as ``y + lambda s``, lambda annealed over
  iterations (``reg * reg_decay**t``). B.2's exact formula did not survive in our copy of the
  paper; this is the L2-regularised quadratic model's minimiser, our reading of it.
* Step scaling (trust region) and the retain constraint of equation 2: a step is cut to the
  trust radius, then halved until ``L_retain <= L_retain(theta_ft) + epsilon`` holds and the
  forget loss rises; the forget loss's actual / predicted (linear) increase resizes the radius.
* 3 iterations, pairs recomputed at the start of each (B.1).

``gradient-ascent`` runs the same loop with the identity instead of ``H^-1``: same data, retain
constraint, trust region, line search and iterations (C.2's first-order comparison).

Defaults not given in the paper (epsilon, trust radius, damping, lambda schedule, batch sizes)
are parameters; see ``InfluenceConfig``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from core.base.errors import InputError
from core.base.tensors import flat, to_host
from core.restoration.context import RestoreContext
from core.restoration.distances import delta_distances, lora_deltas
from core.restoration.registry import RestoreOutput, register
from core.world.data import Example
from core.world.loss import encode_batches, per_example_loss
from core.world.models import load_model


@dataclass(frozen=True)
class InfluenceConfig:
    iterations: int = 3  # restoration iterations, curvature pairs recomputed at each (B.1)
    pairs: int = 10  # L-BFGS pairs per iteration (B.1: ~10)
    pair_lrs: tuple = (0.001, 0.002, 0.005)  # probe-step learning rates, cycled (B.1)
    epsilon: float = 0.05  # eq. 2: retain loss may rise by at most this (nats per token) over the fine-tune's
    trust_radius: float = 0.1  # initial step-norm bound, as a fraction of ||theta_ft|| (LoRA parameters)
    probe_radius: float = 0.01  # initial probe-step bound, same units
    min_curvature: float = 1e-6  # reject pairs with s.y <= min_curvature * ||s|| ||y|| (B.1 filter 1)
    damping: float = 0.1  # negative curvature: y += delta s so that s.y = damping ||s|| ||y|| (filter 3)
    reg: float = 1.0  # L2 regularisation lambda of the first iteration (B.2), per unit-norm s
    reg_decay: float = 0.1  # lambda_t = reg * reg_decay**t (annealed)
    halvings: int = 8  # line-search halvings before an iteration gives up
    expansions: int = 3  # line-search doublings while the constraint holds and the forget loss rises
    batch_size: int = 16  # examples per gradient batch
    lr: float = 0.0  # > 0: fixed step theta += lr * d, no line search (C.2 trajectory plots)
    preconditioner: str = "lbfgs"  # "lbfgs" (curvature) or "identity" (gradient ascent)

    def expected_steps(self) -> int:
        return self.iterations + 1


@dataclass(frozen=True)
class GradientAscentConfig(InfluenceConfig):
    preconditioner: str = "identity"


class LoraObjective:
    """Losses and gradients of data sets as functions of the flat LoRA parameter vector."""

    def __init__(self, model, tokenizer, batch_size: int):
        self.model, self.tok, self.batch_size = model, tokenizer, batch_size
        self.params = [p for n, p in model.named_parameters() if "lora_" in n]
        for n, p in model.named_parameters():
            p.requires_grad_("lora_" in n)
        self._batches: dict[int, list[dict]] = {}

    def batches(self, examples: list[Example]) -> list[dict]:
        key = id(examples)
        if key not in self._batches:
            self._batches[key] = encode_batches(self.tok, examples, self.batch_size)
        return self._batches[key]

    def get(self) -> torch.Tensor:
        """The flat LoRA vector in fp32 on the parameters' device (L-BFGS algebra never runs in bf16)."""
        return flat(p.detach() for p in self.params)

    @torch.no_grad()
    def set(self, theta: torch.Tensor) -> None:
        """Write a flat vector (any device, any float dtype) into the parameters, cast once per tensor."""
        start = 0
        for p in self.params:
            p.copy_(theta[start : start + p.numel()].view_as(p))
            start += p.numel()

    def loss(self, examples: list[Example]) -> float:
        with torch.no_grad():
            return sum(float(per_example_loss(self.model, b).sum()) for b in self.batches(examples)) / len(examples)

    def loss_and_grad(self, examples: list[Example]) -> tuple[float, torch.Tensor]:
        total, grads = 0.0, [torch.zeros_like(p) for p in self.params]
        for batch in self.batches(examples):
            loss = per_example_loss(self.model, batch).sum() / len(examples)
            for acc, g in zip(grads, torch.autograd.grad(loss, self.params)):
                acc += g
            total += float(loss.detach())
        return total, flat(grads)


@dataclass
class PairStats:
    kept: int = 0
    rejected: int = 0
    damped: int = 0
    dropped: int = 0


def filter_pair(
    s: torch.Tensor, y: torch.Tensor, config: InfluenceConfig, stats: PairStats
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """B.1's filters on one (s, y) pair; returns it scaled to ``||s|| = 1`` or None."""
    ns, ny = float(s.norm()), float(y.norm())
    if not (math.isfinite(ns) and math.isfinite(ny)) or ns < 1e-12 or ny < 1e-12:
        stats.dropped += 1
        return None
    sy = float(s @ y)
    if sy < 0:
        y = y + ((config.damping * ns * ny - sy) / ns**2) * s
        stats.damped += 1
    elif sy <= config.min_curvature * ns * ny:
        stats.rejected += 1
        return None
    stats.kept += 1
    return s / ns, y / ns


def curvature_pairs(
    obj: LoraObjective, sets: list[list[Example]], config: InfluenceConfig, radius: float, progress
) -> tuple[list, PairStats]:
    """Build up to ``config.pairs`` filtered L-BFGS pairs around the current parameters (B.1)."""
    theta0, probe = obj.get(), obj.get()
    pairs, stats = [], PairStats()
    for attempt in range(2 * config.pairs):
        if len(pairs) == config.pairs:
            break
        examples, lr = sets[attempt % len(sets)], config.pair_lrs[attempt % len(config.pair_lrs)]
        obj.set(probe)
        loss0, g0 = obj.loss_and_grad(examples)
        s = -lr * g0
        if float(s.norm()) > radius:
            s = s * (radius / float(s.norm()))
        obj.set(probe + s)
        loss1, g1 = obj.loss_and_grad(examples)
        y = g1 - g0
        kept = filter_pair(s, y, config, stats)
        if kept is not None:
            pairs.append(kept)
        predicted = -float(g0 @ s) - 0.5 * float(s @ y)
        ratio = (loss0 - loss1) / predicted if predicted > 0 else -1.0
        if ratio > 0.1:
            probe = probe + s
        radius = radius * 2 if ratio > 0.75 else radius * 0.5 if ratio < 0.25 else radius
        progress.update(len(pairs) / config.pairs, f"L-BFGS pair {len(pairs)}/{config.pairs}")
    obj.set(theta0)
    return pairs, stats


def lbfgs_direction(g: torch.Tensor, pairs: list[tuple[torch.Tensor, torch.Tensor]], reg: float) -> torch.Tensor:
    """Two-loop recursion: ``(H + reg I)^-1 g`` from (s, y) pairs, oldest first (Liu & Nocedal)."""
    if not pairs:
        return g / (1.0 + reg)
    ys = [(s, y + reg * s) for s, y in pairs]
    q, alphas = g.clone(), []
    for s, y in reversed(ys):
        rho = 1.0 / float(y @ s)
        a = rho * float(s @ q)
        q -= a * y
        alphas.append((a, rho))
    s_last, y_last = ys[-1]
    r = q * (float(s_last @ y_last) / float(y_last @ y_last))
    for (s, y), (a, rho) in zip(ys, reversed(alphas)):
        r += s * (a - rho * float(y @ r))
    return r


def _check(data) -> None:
    if not data.forget:
        raise InputError("The forget set is empty.", "pass harmful examples the fine-tuned model complies with.")
    if not data.retain:
        raise InputError("The retain set is empty.", "pass benign task examples to preserve.")


def _validate(config: InfluenceConfig) -> None:
    if config.iterations < 1 or config.pairs < 0 or config.epsilon < 0 or config.trust_radius <= 0:
        raise InputError(
            f"Invalid restoration parameters (iterations={config.iterations}, pairs={config.pairs}, "
            f"epsilon={config.epsilon}, trust_radius={config.trust_radius}).",
            "use iterations >= 1, pairs >= 0, epsilon >= 0 and trust_radius > 0.",
        )
    if config.preconditioner not in ("lbfgs", "identity"):
        raise InputError(f"Unknown preconditioner '{config.preconditioner}'.", "use lbfgs or identity.")


def influence_restore(ctx: RestoreContext, config: InfluenceConfig) -> RestoreOutput:
    """The restoration loop shared by ``curvature`` and ``gradient-ascent``."""
    _validate(config)
    _check(ctx.data)
    model = load_model(ctx.finetuned)
    obj = LoraObjective(model, ctx.tokenizer, config.batch_size)
    data = ctx.data
    curvature_sets = [s for s in [data.curvature_forget, *data.curvature_retain] if s]
    theta_ft = obj.get()
    ft_deltas = lora_deltas(model)
    scale = float(theta_ft.norm())
    radius, probe_radius = config.trust_radius * scale, config.probe_radius * scale
    retain_ft = obj.loss(data.retain)
    bound = retain_ft + config.epsilon
    forget_now = obj.loss(data.forget)
    snapshots = [to_host(theta_ft)]
    notes: dict = {"retain_loss_finetuned": retain_ft, "retain_bound": bound, "iterations": []}
    ctx.record_step(
        model,
        iteration=0,
        forget_loss_full=forget_now,
        retain_loss_full=retain_ft,
        **delta_distances(lora_deltas(model), ft_deltas),
    )
    for it in range(config.iterations):
        stage = ctx.progress.stage(it / config.iterations, (it + 1) / config.iterations)
        info = _iteration(obj, data, curvature_sets, config, it, radius, probe_radius, bound, stage)
        notes["iterations"].append(info)
        radius = info["next_radius"]
        snapshots.append(to_host(obj.get()))
        ctx.record_step(
            model,
            iteration=it + 1,
            forget_loss_full=info["forget_loss"],
            retain_loss_full=info["retain_loss"],
            step_norm=info["step_norm"],
            pairs_kept=info["pairs"]["kept"],
            **delta_distances(lora_deltas(model), ft_deltas),
        )
        if info.get("stopped"):
            notes["stopped"] = info["stopped"]
            break
    return RestoreOutput(model, "adapter", notes, np.stack(snapshots))


def _iteration(
    obj: LoraObjective,
    data,
    curvature_sets,
    config: InfluenceConfig,
    it: int,
    radius: float,
    probe_radius: float,
    bound: float,
    progress,
) -> dict:
    """One restoration iteration: pairs, direction, scaled step under the retain constraint."""
    pairs, stats = ([], None)
    if config.preconditioner == "lbfgs" and config.pairs:
        pairs, stats = curvature_pairs(obj, curvature_sets, config, probe_radius, progress.stage(0, 0.8))
    theta = obj.get()
    forget0, g = obj.loss_and_grad(data.forget)
    reg = config.reg * config.reg_decay**it
    d = lbfgs_direction(g, pairs, reg) if config.preconditioner == "lbfgs" else g
    if float(g @ d) <= 0:
        d = g  # a non-ascent preconditioned direction (should not happen with positive pairs): fall back
    info = {
        "pairs": vars(stats) if stats else {"kept": 0},
        "lambda": reg,
        "forget_loss": forget0,
        "retain_loss": obj.loss(data.retain),
    }
    if config.lr > 0:
        step = config.lr * d
        return {**info, **_fixed_step(obj, data, theta, step, radius, bound)}
    return {**info, **_line_search(obj, data, theta, g, d, forget0, radius, bound, config, it, progress)}


def _line_search(
    obj: LoraObjective,
    data,
    theta,
    g,
    d,
    forget0: float,
    radius: float,
    bound: float,
    config: InfluenceConfig,
    it: int,
    progress,
) -> dict:
    """Step scaling (B.1-B.2): start on the trust-region boundary, halve until the retain
    constraint (eq. 2) holds and the forget loss rises, then double while it still holds and
    the forget loss keeps rising (the "small grid search" over the update scale). The accepted
    step's reduction ratio (actual / linearly predicted forget increase) sets the next radius."""
    t = radius / float(d.norm())

    def trial(scale: float):
        obj.set(theta + scale * d)
        f, r = obj.loss(data.forget), obj.loss(data.retain)
        progress.update(0.9, f"line search: step {scale * float(d.norm()):.3g}, retain {r:.3f} (bound {bound:.3f})")
        return (f, r) if math.isfinite(f) and math.isfinite(r) and r <= bound and f > forget0 else None

    best = None
    for _ in range(config.halvings + 1):
        if (found := trial(t)) is not None:
            best = (t, *found)
            break
        t *= 0.5
    if best is None:
        obj.set(theta)
        return {
            "step_norm": 0.0,
            "next_radius": radius * 0.5,
            "stopped": f"iteration {it + 1}: no step within the retain bound {bound:.3f} raised the forget loss",
        }
    for _ in range(config.expansions if best[0] == radius / float(d.norm()) else 0):
        found = trial(2 * best[0])
        if found is None or found[0] <= best[1]:
            break
        best = (2 * best[0], *found)
    t, forget1, retain1 = best
    obj.set(theta + t * d)
    step_norm = t * float(d.norm())
    ratio = (forget1 - forget0) / (t * float(g @ d))
    next_radius = step_norm * (2.0 if ratio > 0.75 else 0.5 if ratio < 0.25 else 1.0)
    return {
        "forget_loss": forget1,
        "retain_loss": retain1,
        "step_norm": step_norm,
        "ratio": ratio,
        "next_radius": next_radius,
    }


def _fixed_step(obj: LoraObjective, data, theta: torch.Tensor, step: torch.Tensor, radius: float, bound: float) -> dict:
    """A fixed-learning-rate step; a non-finite or exploding loss reverts it and stops the run."""
    obj.set(theta + step)
    forget1, retain1 = obj.loss(data.forget), obj.loss(data.retain)
    if not (math.isfinite(forget1) and math.isfinite(retain1)) or retain1 > bound + 10.0:
        obj.set(theta)
        return {
            "step_norm": 0.0,
            "next_radius": radius,
            "stopped": f"diverged (forget {forget1:.3g}, retain {retain1:.3g}); kept the last good state",
        }
    return {"forget_loss": forget1, "retain_loss": retain1, "step_norm": float(step.norm()), "next_radius": radius}


@register(
    "curvature",
    InfluenceConfig,
    needs_adapter=True,
    summary="curvature-aware influence update with L-BFGS (paper 1, eq. 5)",
)
def run_curvature(ctx: RestoreContext, config: InfluenceConfig) -> RestoreOutput:
    return influence_restore(ctx, config)


@register(
    "gradient-ascent",
    GradientAscentConfig,
    needs_adapter=True,
    summary="first-order ascent on the forget loss, same constraint and budget",
)
def run_gradient_ascent(ctx: RestoreContext, config: InfluenceConfig) -> RestoreOutput:
    return influence_restore(ctx, config)
