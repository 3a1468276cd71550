"""Curvature-aware safety restoration (paper 1, "Curvature-Aware Safety Restoration in LLMs
Fine-Tuning", section 3, appendix B.1-B.2) and its first-order baseline, over LoRA parameters.

Equation 5, the influence update: raise the forget loss along the gradient preconditioned by the
inverse Hessian, ``theta <- theta + eta * H^-1 grad L_forget(theta)``, with ``H^-1`` an L-BFGS
approximation built from a *mixed curvature set* (a forget subset disjoint from the forget set,
and two disjoint retain subsets; ``core.restoration.data``).

* ``curvature_pairs`` (B.1): ``pairs`` (10) pairs per iteration, spread round-robin over the
  retain subset A, the forget subset and the retain subset B (4/3/3). Each pair is built on its
  own batch of ``pair_batch`` examples, the next slice of its subset's pool (gradients
  accumulated over micro-batches of ``batch_size``): a probe step ``s = -lr g`` on that batch's
  loss and ``y = g(theta + s) - g(theta)`` on the same batch. The learning rate cycles over
  0.001, 0.002, 0.005 *within* each subset (pair k of subset j at iteration t takes rate
  ``(k + j + t) mod 3``), so no subset is tied to one rate. A trust region bounds the probe
  steps; the reduction ratio decides whether the probe moves on and resizes it (B.1). Probe
  moves are exploratory: theta returns to where the pairs were built.
* Filters, in B.1's order (``filter_pair``): (1) a pair with insufficient curvature,
  ``s.y <= min_curvature ||s|| ||y||``, is rejected, negative curvature included; (2) a kept
  pair is normalised to ``||s|| = 1`` before storage (``y`` by the same factor, so ``y ~ H s``
  holds); (3) adaptive damping: a negative-curvature pair, already rejected by (1), raises a
  shift ``mu`` to ``damping * |s.y| / ||s||^2`` (the most negative curvature seen), added to
  every stored pair as ``y + mu s``, i.e. the model ``B + mu I``; (4) a pair with a non-finite
  or vanishing ``||s||`` or ``||y||`` is excluded. Every attempted pair's ``s.y``, ``||s||``,
  ``||y||`` and the filter that fired go into the run record (``notes.iterations[i].pairs``).
  Departure: B.1's thresholds did not survive in our copy; (1) is relative (a cosine), so it
  does not depend on the probe's learning rate.
* ``lbfgs_direction`` (B.2): the two-loop recursion for ``(B + (lambda_t + mu) I)^-1 g``: B.2's L2
  regularisation folded in as ``y + lambda s``, lambda annealed over iterations
  (``reg * reg_decay**t``). B.2's exact formula did not survive in our copy of the paper; this
  is the L2-regularised quadratic model's minimiser, our reading of it.
* Step (B.2, eq. 4): the update is ``eta d`` with ``d`` the direction above. Eq. 4's trust region
  ``||Delta||_M <= delta`` in the metric ``M = B + (lambda + mu) I`` of the same L-BFGS model is
  solved in closed form along ``d`` (``d^T M d = g^T d``): ``eta = delta / sqrt(g^T d)``. The
  scale is set by B.2's "small grid search": radii ``delta = m * sqrt(2 epsilon)`` for ``m`` in
  ``step_grid`` (``sqrt(2 epsilon)`` is the radius at which the quadratic model ``1/2 Delta^T M
  Delta`` reaches eq. 2's epsilon), each evaluated on the validation split (disjoint from the
  held-out evaluation, the forget, retain and curvature sets); the largest validation
  forget-loss increase whose validation retain loss satisfies eq. 2,
  ``L_retain(theta) <= L_retain(theta_ft) + epsilon``, is taken. No grid point qualifying stops
  the run there.
* 3 iterations, pairs recomputed at the start of each (B.1); the subsets' batch cursors carry
  on across iterations, so later iterations see further batches while a pool lasts.

The forget loss counts either all of the fine-tune's harmful answer (``forget_tokens=0``, the
paper's cross-entropy on the forget set) or only its first K tokens, where a refusal is decided
(``forget_tokens=K``); the same rule applies to the forget set, the curvature forget subset and
the validation forget set.

Each answer's loss is its mean token cross-entropy (``token_loss="mean"``, so epsilon is in
nats per token and independent of answer length), or its sum over the answer's tokens
(``"sum"``). Eq. 1 did not survive in our copy; "the standard autoregressive language modeling
loss" over "an input sequence" reads as the sequence's summed negative log-likelihood. The grid
search makes the restoration's step independent of that scale for gradient ascent and nearly
so for L-BFGS (``H^-1 g`` is scale-free but for lambda), so restorations keep the per-token mean;
fixed learning rates are not scale-free, so the C.2 trajectories take the sum (see
``core.restoration.trajectory``).

``gradient-ascent`` runs the same loop with the identity instead of ``H^-1``: same data, the same
grid search on the same validation split (C.2's first-order comparison). The identity metric is
Euclidean, where ``sqrt(2 epsilon)`` means nothing, so its grid's unit is ``trust_radius *
||theta_ft||``. Equal gradient budget (``match_budget``, on by default): a curvature run spends
``2 * pair_batch`` example-gradients on each pair besides the forget gradient, so gradient ascent
takes ``ceil(gradient_budget / |forget|)`` iterations, as many example-gradients as the curvature
run its ``iterations``, ``pairs`` and ``pair_batch`` describe (``gradient_budget``). The paper
gives no budget for C.2; fixed-rate trajectories (``lr > 0``) keep equal step counts, as its
figures do. Both methods record the example-gradients they actually took.

Defaults not given in the paper (epsilon, the grid, the probe radius, damping, lambda schedule,
batch sizes) are parameters; see ``InfluenceConfig``.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import ClassVar

import numpy as np
import torch

from core.base.errors import InputError
from core.base.options import option
from core.base.tensors import flat, to_host
from core.restoration.context import RestoreContext
from core.restoration.data import DataConfig
from core.restoration.distances import delta_distances, lora_deltas
from core.restoration.registry import RestoreOutput, register
from core.world.data import Example
from core.world.loss import encode_batches, per_example_loss
from core.world.models import load_model

NORM_FLOOR = 1e-12  # B.1 filter 4: a step or gradient-difference norm below this is degenerate


@dataclass(frozen=True)
class InfluenceConfig:
    quick_minutes: ClassVar[float] = 10  # quick preset, 2 idle threads, demo: data 2.5, method 3.2, evaluation 4.5

    iterations: int = option(3, "restoration iterations, L-BFGS pairs recomputed at each (B.1: 3)", low=1, quick=1)
    pairs: int = option(
        10, "L-BFGS pairs per iteration, spread over the forget and two retain subsets (B.1: 10)", low=0
    )
    pair_batch: int = option(
        16,
        "examples per pair, a fresh batch each, gradient-accumulated (B.1: 64 on a GPU; 16 fits 2 CPU cores)",
        low=1,
        quick=8,
    )
    pair_lrs: tuple = option((0.001, 0.002, 0.005), "probe-step learning rates, varied within each subset (B.1)")
    epsilon: float = option(
        0.05, "eq. 2: the validation retain loss may rise by at most this (nats per token) over the fine-tune's", low=0
    )
    step_grid: tuple = option(
        (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0),
        "B.2 grid: trust radii tried on validation, multiples of sqrt(2 epsilon) in the L-BFGS metric (eq. 4)",
        quick=(0.5, 2.0, 8.0),
    )
    trust_radius: float = option(
        0.1, "gradient ascent's grid unit (Euclidean metric): this fraction of ||theta_ft||", low=0
    )
    probe_radius: float = option(
        0.01, "initial bound on the pairs' probe steps, a fraction of ||theta_ft|| (B.1)", low=0
    )
    min_curvature: float = option(1e-6, "B.1 filter 1: reject a pair with s.y <= this x ||s|| ||y||")
    damping: float = option(
        1.0, "B.1 filter 3: negative curvature raises the shift mu to this x |s.y| / ||s||^2", low=0
    )
    reg: float = option(1.0, "B.2's L2 weight lambda of the first iteration: (H + lambda I)^-1", low=0)
    reg_decay: float = option(0.1, "lambda_t = reg x reg_decay^t (annealed)", low=0)
    forget_tokens: int = option(
        0,
        "forget-loss tokens: 0 = all of the fine-tune's harmful answer, K = its first K (where refusal is decided)",
        low=0,
    )
    batch_size: int = option(8, "examples per forward/backward micro-batch (gradients accumulate over a batch)", low=1)
    lr: float = option(0.0, "> 0: a fixed step theta += lr d, no grid search (C.2 trajectory plots)", low=0)
    token_loss: str = option(
        "mean",
        "each answer's loss: mean over its tokens (epsilon in nats/token) or sum (eq. 1's sequence "
        "log-likelihood, where the paper's fixed learning rates apply)",
        choices=("mean", "sum"),
    )
    preconditioner: str = option(
        "lbfgs", "lbfgs (curvature-aware) or identity (gradient ascent)", choices=("lbfgs", "identity")
    )

    def expected_steps(self) -> int:
        return self.iterations + 1


@dataclass(frozen=True)
class GradientAscentConfig(InfluenceConfig):
    preconditioner: str = option(
        "identity", "lbfgs (curvature-aware) or identity (gradient ascent)", choices=("lbfgs", "identity")
    )
    match_budget: bool = option(
        True,
        "iterate until as many example-gradients are spent as the curvature run with these iterations, "
        "pairs and pair_batch (C.2's comparison at an equal gradient budget)",
    )

    def expected_steps(self) -> int:  # for the ETA: the default forget set's size stands in for the real one's
        return iteration_count(self, DataConfig.forget) + 1


def gradient_budget(config: InfluenceConfig, forget_size: int) -> int:
    """Example-gradients a curvature run with ``config`` takes when every pair is kept: per
    iteration, two gradients on each pair's batch (B.1's ``g(theta)`` and ``g(theta + s)``) and
    the forget gradient of the update (eq. 5)."""
    return config.iterations * (2 * config.pairs * config.pair_batch + forget_size)


def iteration_count(config: InfluenceConfig, forget_size: int) -> int:
    """Iterations the loop runs: ``config.iterations``, or for gradient ascent at a matched budget
    as many forget-gradient iterations as ``gradient_budget`` pays for."""
    if config.preconditioner == "lbfgs" or config.lr > 0 or not getattr(config, "match_budget", False):
        return config.iterations
    return math.ceil(gradient_budget(config, forget_size) / max(1, forget_size))


class LoraObjective:
    """Losses and gradients of data sets as functions of the flat LoRA parameter vector."""

    def __init__(self, model, tokenizer, batch_size: int, token_loss: str = "mean"):
        self.model, self.tok, self.batch_size, self.token_loss = model, tokenizer, batch_size, token_loss
        self.params = [p for n, p in model.named_parameters() if "lora_" in n]
        for n, p in model.named_parameters():
            p.requires_grad_("lora_" in n)
        self._batches: dict[tuple, list[dict]] = {}
        self.gradient_examples = 0  # example-gradients taken (the budget C.2's comparison equalises)

    def batches(self, examples: list[Example]) -> list[dict]:
        """Encoded micro-batches of ``examples``, cached by content (never by ``id``, which a
        freed list's successor may reuse)."""
        key = tuple((e.prompt, e.response, e.complete) for e in examples)
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

    def example_losses(self, batch: dict) -> torch.Tensor:
        """Each example's answer loss: its mean token cross-entropy, or with ``token_loss="sum"``
        the sum over its answer tokens (eq. 1's sequence negative log-likelihood)."""
        return per_example_loss(self.model, batch, self.token_loss)

    def loss(self, examples: list[Example]) -> float:
        with torch.no_grad():
            return sum(float(self.example_losses(b).sum()) for b in self.batches(examples)) / len(examples)

    def loss_and_grad(self, examples: list[Example]) -> tuple[float, torch.Tensor]:
        """Mean loss and its gradient, accumulated over the micro-batches."""
        total, grads = 0.0, [torch.zeros_like(p) for p in self.params]
        self.gradient_examples += len(examples)
        for batch in self.batches(examples):
            loss = self.example_losses(batch).sum() / len(examples)
            for acc, g in zip(grads, torch.autograd.grad(loss, self.params)):
                acc += g
            total += float(loss.detach())
        return total, flat(grads)


def _finite(x: float) -> float | None:
    """A float for the JSON record: non-finite values become None."""
    return x if math.isfinite(x) else None


def filter_pair(
    s: torch.Tensor, y: torch.Tensor, min_curvature: float
) -> tuple[tuple[torch.Tensor, torch.Tensor] | None, dict]:
    """B.1's filters on one raw (s, y) pair in B.1's order: (1) insufficient curvature (negative
    included) rejected, (2) normalised to ``||s|| = 1``, (4) degenerate norms excluded. Filter (3),
    the damping a negative-curvature pair triggers, is the caller's (it acts on the stored set).
    Returns the stored pair or None, and the row for the record: raw ``s.y``, ``||s||``,
    ``||y||``, the curvature ``s.y / ||s||^2`` and the filter that fired ("kept" when none did)."""
    ns, ny, sy = float(s.norm()), float(y.norm()), float(s @ y)
    row = {"sy": _finite(sy), "s_norm": _finite(ns), "y_norm": _finite(ny)}
    row["curvature"] = _finite(sy / ns**2) if ns > 0 and math.isfinite(ns) else None
    if sy <= min_curvature * ns * ny:  # (1); NaN compares False and falls through to (4)
        row["filter"] = "negative curvature" if sy < 0 else "insufficient curvature"
        return None, row
    stored = (s / ns, y / ns)  # (2)
    if not all(math.isfinite(v) for v in (ns, ny, sy)) or ns < NORM_FLOOR or ny < NORM_FLOOR:  # (4)
        row["filter"] = "degenerate norm"
        return None, row
    row["filter"] = "kept"
    return stored, row


@dataclass
class CurvaturePairs:
    """One iteration's L-BFGS memory: stored (unit-``s``) pairs, the adaptive damping ``mu`` of
    filter (3), and one record row per attempted pair."""

    pairs: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)
    damping: float = 0.0
    rows: list[dict] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        return dict(Counter(r["filter"] for r in self.rows))


def _next_batch(pool: list[Example], size: int, cursors: dict[str, int], name: str) -> tuple[list[Example], int]:
    """The next consecutive ``size``-slice of ``pool`` (wrapping once the pool is used up) and its index."""
    slices = max(1, len(pool) // size)
    index = cursors.get(name, 0) % slices
    cursors[name] = cursors.get(name, 0) + 1
    return pool[index * size : (index + 1) * size], index


def curvature_pairs(
    obj,
    sets: dict[str, list[Example]],
    config: InfluenceConfig,
    radius: float,
    progress,
    iteration: int = 0,
    cursors: dict[str, int] | None = None,
) -> CurvaturePairs:
    """Build up to ``config.pairs`` filtered L-BFGS pairs around the current parameters (B.1).

    ``obj`` has ``get``, ``set`` and ``loss_and_grad(examples)`` (a ``LoraObjective``); ``sets``
    maps each curvature subset's name to its pool, attempts go round-robin over them, each on
    the subset's next batch (``cursors`` keeps the position across iterations). At most
    ``2 * pairs`` attempts: a rejected pair is replaced by one more attempt on the next subset."""
    cursors = {} if cursors is None else cursors
    names = [n for n, pool in sets.items() if pool]
    theta0 = obj.get()
    probe, out = theta0.clone(), CurvaturePairs()
    used: dict[str, int] = {n: 0 for n in names}
    seen: set[tuple[str, int]] = set()
    for attempt in range(2 * config.pairs if names else 0):
        if len(out.pairs) == config.pairs:
            break
        j = attempt % len(names)
        name = names[j]
        k, used[name] = used[name], used[name] + 1
        lr = config.pair_lrs[(k + j + iteration) % len(config.pair_lrs)]
        batch, index = _next_batch(sets[name], config.pair_batch, cursors, name)
        obj.set(probe)
        loss0, g0 = obj.loss_and_grad(batch)
        s = -lr * g0
        clipped = float(s.norm()) > radius
        if clipped:
            s = s * (radius / float(s.norm()))
        obj.set(probe + s)
        loss1, g1 = obj.loss_and_grad(batch)
        y = g1 - g0
        stored, row = filter_pair(s, y, config.min_curvature)
        if row["filter"] == "negative curvature":  # (3) adaptive damping
            out.damping = max(out.damping, config.damping * -float(s @ y) / float(s.norm()) ** 2)
        if stored is not None:
            out.pairs.append(stored)
        predicted = -float(g0 @ s) - 0.5 * float(s @ y)
        ratio = (loss0 - loss1) / predicted if predicted > 0 else -1.0
        moved = ratio > 0.1
        if moved:
            probe = probe + s
        row.update(
            iteration=iteration,
            set=name,
            batch=index,
            examples=len(batch),
            fresh=(name, index) not in seen,
            lr=lr,
            clipped=clipped,
            ratio=_finite(ratio),
            probe_moved=moved,
            damping=out.damping,
        )
        seen.add((name, index))
        out.rows.append(row)
        radius = radius * 2 if ratio > 0.75 else radius * 0.5 if ratio < 0.25 else radius
        progress.update(len(out.pairs) / max(1, config.pairs), f"L-BFGS pair {len(out.pairs)}/{config.pairs}")
    obj.set(theta0)
    return out


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


def first_tokens(tokenizer, examples: list[Example], k: int) -> list[Example]:
    """``examples`` with each response cut to its first ``k`` tokens (``k = 0``: unchanged).

    The cut is decoded back to text, so the loss's tokenisation re-encodes it; for a BPE
    tokenizer that is the same prefix up to a merge at the cut."""
    if k <= 0:
        return examples
    out = []
    for e in examples:
        ids = tokenizer(e.response or "", add_special_tokens=False).input_ids
        out.append(replace(e, response=tokenizer.decode(ids[:k]), complete=False) if len(ids) > k else e)
    return out


def _check(data, config: InfluenceConfig) -> None:
    if not data.forget:
        raise InputError("The forget set is empty.", "pass harmful examples the fine-tuned model complies with.")
    if not data.retain:
        raise InputError("The retain set is empty.", "pass benign task examples to preserve.")
    if config.lr == 0 and not (data.validation_forget and data.validation_retain):
        raise InputError(
            "The validation split is empty: B.2's step-scale grid search has nothing to decide on.",
            "build the data with core.restoration.data.restoration_data, or pass lr > 0 for fixed steps.",
        )


def _validate(config: InfluenceConfig) -> None:
    if config.iterations < 1 or config.pairs < 0 or config.epsilon < 0 or config.trust_radius <= 0:
        raise InputError(
            f"Invalid restoration parameters (iterations={config.iterations}, pairs={config.pairs}, "
            f"epsilon={config.epsilon}, trust_radius={config.trust_radius}).",
            "use iterations >= 1, pairs >= 0, epsilon >= 0 and trust_radius > 0.",
        )
    if config.pair_batch < 1 or config.batch_size < 1 or not config.pair_lrs or not config.step_grid:
        raise InputError(
            f"Invalid pair or grid parameters (pair_batch={config.pair_batch}, batch_size={config.batch_size}, "
            f"pair_lrs={config.pair_lrs}, step_grid={config.step_grid}).",
            "use pair_batch >= 1, batch_size >= 1 and non-empty pair_lrs and step_grid.",
        )
    if config.forget_tokens < 0 or any(not (m > 0 and math.isfinite(m)) for m in config.step_grid):
        raise InputError(
            f"Invalid forget_tokens={config.forget_tokens} or step_grid={config.step_grid}.",
            "use forget_tokens >= 0 (0: the whole answer) and positive grid multiples.",
        )
    if config.preconditioner not in ("lbfgs", "identity"):
        raise InputError(f"Unknown preconditioner '{config.preconditioner}'.", "use lbfgs or identity.")
    if config.token_loss not in ("mean", "sum"):
        raise InputError(f"Unknown token_loss '{config.token_loss}'.", "use mean or sum.")


def influence_restore(ctx: RestoreContext, config: InfluenceConfig) -> RestoreOutput:
    """The restoration loop shared by ``curvature`` and ``gradient-ascent``."""
    _validate(config)
    _check(ctx.data, config)
    model = load_model(ctx.finetuned)
    obj = LoraObjective(model, ctx.tokenizer, config.batch_size, config.token_loss)
    cut = lambda examples: first_tokens(ctx.tokenizer, examples, config.forget_tokens)  # noqa: E731
    data = replace(
        ctx.data,
        forget=cut(ctx.data.forget),
        curvature_forget=cut(ctx.data.curvature_forget),
        validation_forget=cut(ctx.data.validation_forget),
    )
    retain_sets = list(data.curvature_retain) + [[], []]
    sets = {"retain-a": retain_sets[0], "forget": data.curvature_forget, "retain-b": retain_sets[1]}
    theta_ft = obj.get()
    ft_deltas = lora_deltas(model)
    scale = float(theta_ft.norm())
    retain_ft = obj.loss(data.retain)
    forget_now = obj.loss(data.forget)
    notes: dict = {"retain_loss_finetuned": retain_ft, "forget_tokens": config.forget_tokens, "iterations": []}
    bounds = {"scale": scale, "retain": retain_ft + config.epsilon}
    if config.lr == 0:
        validation_ft = obj.loss(data.validation_retain)
        bounds["validation_retain"] = validation_ft + config.epsilon
        notes.update(
            validation_retain_finetuned=validation_ft,
            validation_bound=bounds["validation_retain"],
            validation_forget_finetuned=obj.loss(data.validation_forget),
            validation_sizes={"forget": len(data.validation_forget), "retain": len(data.validation_retain)},
        )
    notes["curvature_sets"] = {name: len(pool) for name, pool in sets.items()}
    snapshots = [to_host(theta_ft)]
    ctx.record_step(
        model,
        iteration=0,
        forget_loss_full=forget_now,
        retain_loss_full=retain_ft,
        **delta_distances(lora_deltas(model), ft_deltas),
    )
    cursors: dict[str, int] = {}
    rounds = iteration_count(config, len(data.forget))
    notes.update(iterations_planned=rounds, gradient_budget=gradient_budget(config, len(data.forget)))
    for it in range(rounds):
        stage = ctx.progress.stage(it / rounds, (it + 1) / rounds)
        info = _iteration(obj, data, sets, config, it, bounds, config.probe_radius * scale, cursors, stage)
        notes["iterations"].append(info)
        snapshots.append(to_host(obj.get()))
        ctx.record_step(
            model,
            iteration=it + 1,
            forget_loss_full=info["forget_loss"],
            retain_loss_full=info["retain_loss"],
            step_norm=info["step_norm"],
            pairs_kept=info["pair_counts"].get("kept", 0),
            **delta_distances(lora_deltas(model), ft_deltas),
        )
        if info.get("stopped"):
            notes["stopped"] = info["stopped"]
            break
    notes["gradient_examples"] = obj.gradient_examples
    return RestoreOutput(model, "adapter", notes, np.stack(snapshots))


def _iteration(
    obj: LoraObjective,
    data,
    sets: dict[str, list[Example]],
    config: InfluenceConfig,
    it: int,
    bounds: dict,
    probe_radius: float,
    cursors: dict[str, int],
    progress,
) -> dict:
    """One restoration iteration: pairs (B.1), direction (eq. 5, B.2), step (B.2 grid, eq. 4)."""
    built = CurvaturePairs()
    if config.preconditioner == "lbfgs" and config.pairs:
        built = curvature_pairs(obj, sets, config, probe_radius, progress.stage(0, 0.7), it, cursors)
    theta = obj.get()
    forget0, g = obj.loss_and_grad(data.forget)
    reg = config.reg * config.reg_decay**it
    d = lbfgs_direction(g, built.pairs, reg + built.damping) if config.preconditioner == "lbfgs" else g
    fallback = float(g @ d) <= 0  # a non-ascent direction (cannot happen with positive pairs): plain gradient
    if fallback:
        d = g
    info = {
        "pairs": built.rows,
        "pair_counts": built.counts(),
        "lambda": reg,
        "damping": built.damping,
        "cos_direction_gradient": float(g @ d) / max(float(g.norm() * d.norm()), 1e-30),
        "fallback_to_gradient": fallback,
        "forget_loss_before": forget0,
    }
    if config.lr > 0:
        return {**info, **_fixed_step(obj, data, theta, config.lr * d, bounds["retain"])}
    step = _grid_search(obj, data, theta, g, d, config, it, bounds, progress.stage(0.75, 1.0))
    return {**info, **step, "forget_loss": obj.loss(data.forget), "retain_loss": obj.loss(data.retain)}


def _grid_search(
    obj: LoraObjective, data, theta, g, d, config: InfluenceConfig, it: int, bounds: dict, progress
) -> dict:
    """B.2's step scale: the radii of ``step_grid`` in the preconditioner's metric (eq. 4's trust
    region, solved along ``d``), each tried on the validation split; the largest validation
    forget-loss increase that keeps eq. 2 on validation wins. Leaves theta at the chosen step."""
    metric_norm = math.sqrt(max(float(g @ d), 1e-30))  # ||d||_M = sqrt(d^T M d) = sqrt(g^T d)
    unit = math.sqrt(2 * config.epsilon) if config.preconditioner == "lbfgs" else config.trust_radius * bounds["scale"]
    obj.set(theta)
    forget_v0 = obj.loss(data.validation_forget)
    rows = []
    for k, multiple in enumerate(sorted(config.step_grid)):
        eta = multiple * unit / metric_norm
        obj.set(theta + eta * d)
        vf, vr = obj.loss(data.validation_forget), obj.loss(data.validation_retain)
        ok = math.isfinite(vf) and math.isfinite(vr) and vr <= bounds["validation_retain"] and vf > forget_v0
        rows.append(
            {
                "multiple": multiple,
                "radius": multiple * unit,
                "step_norm": eta * float(d.norm()),
                "validation_forget": _finite(vf),
                "validation_retain": _finite(vr),
                "feasible": ok,
            }
        )
        progress.update((k + 1) / len(config.step_grid), f"grid {k + 1}/{len(config.step_grid)}: retain {vr:.3f}")
    best = max((r for r in rows if r["feasible"]), key=lambda r: r["validation_forget"], default=None)
    base = {"grid": rows, "validation_forget_before": forget_v0}
    if best is None:
        obj.set(theta)
        return {
            **base,
            "step_norm": 0.0,
            "stopped": f"iteration {it + 1}: no grid step kept the validation retain loss within "
            f"{bounds['validation_retain']:.3f} and raised the validation forget loss",
        }
    obj.set(theta + (best["radius"] / metric_norm) * d)
    return {
        **base,
        "step_norm": best["step_norm"],
        "chosen_multiple": best["multiple"],
        "chosen_radius": best["radius"],
        "validation_forget": best["validation_forget"],
        "validation_retain": best["validation_retain"],
    }


def _fixed_step(obj: LoraObjective, data, theta: torch.Tensor, step: torch.Tensor, bound: float) -> dict:
    """A fixed-learning-rate step; a non-finite or exploding loss reverts it and stops the run."""
    obj.set(theta + step)
    forget1, retain1 = obj.loss(data.forget), obj.loss(data.retain)
    if not (math.isfinite(forget1) and math.isfinite(retain1)) or retain1 > bound + 10.0:
        obj.set(theta)
        return {
            "forget_loss": obj.loss(data.forget),
            "retain_loss": obj.loss(data.retain),
            "step_norm": 0.0,
            "stopped": f"diverged (forget {forget1:.3g}, retain {retain1:.3g}); kept the last good state",
        }
    return {"forget_loss": forget1, "retain_loss": retain1, "step_norm": float(step.norm())}


def pair_table(notes: dict) -> list[dict]:
    """One row per attempted L-BFGS pair of a run's notes (B.1): subset, batch, rate, ``s.y``,
    ``||s||``, ``||y||``, the curvature ``s.y / ||s||^2`` and the filter that fired; plus, per
    iteration, the shift and the chosen step. Empty for a run without pairs."""
    rows = []
    for i, it in enumerate(notes.get("iterations") or [], 1):
        for p in it.get("pairs") or []:
            rows.append(
                {
                    "iteration": i,
                    "subset": p.get("set"),
                    "batch": p.get("batch"),
                    "learning rate": p.get("lr"),
                    "s·y": p.get("sy"),
                    "‖s‖": p.get("s_norm"),
                    "‖y‖": p.get("y_norm"),
                    "curvature s·y/‖s‖²": p.get("curvature"),
                    "filter": p.get("filter"),
                }
            )
    return rows


def iteration_table(notes: dict) -> list[dict]:
    """Per iteration: lambda_t, the damping mu, cos(d, g) (1: the update is the plain gradient)
    and B.2's chosen grid multiple with its validation losses."""
    return [
        {
            "iteration": i,
            "lambda": it.get("lambda"),
            "damping mu": it.get("damping"),
            "cos(direction, gradient)": it.get("cos_direction_gradient"),
            "pairs kept": (it.get("pair_counts") or {}).get("kept", 0),
            "grid multiple": it.get("chosen_multiple"),
            "step norm": it.get("step_norm"),
            "validation forget loss": it.get("validation_forget"),
            "validation retain loss": it.get("validation_retain"),
            "stopped": it.get("stopped", ""),
        }
        for i, it in enumerate(notes.get("iterations") or [], 1)
    ]


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
