"""Curvature: Lanczos, Hutchinson, shares and Taylor coefficients against a planted quadratic
toy; the power-law fits and verdict against planted exponents; the quartic law itself on a
planted gradient-descent run; the causal-LM plumbing (cached prefix, HVPs, parameter sets) on
the tiny model."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import binom
from torch.nn.attention import SDPBackend, sdpa_kernel

from core.base.errors import InputError
from core.geometry.curvature import (
    CausalLoss,
    CurvatureConfig,
    DriftConfig,
    HessianOperator,
    LossHessian,
    attach_teacher,
    conditions,
    coupling,
    curvature,
    drift_monitor,
    fit_drift,
    fit_power_laws,
    geometry,
    gradient_descent_drift,
    hutchinson_samples,
    hutchinson_trace,
    ritz_error_bounds,
    select_parameters,
    share_interval,
    spectral_density,
    top_eigenpairs,
)
from core.world.data import Example
from core.world.loss import encode, encode_batches, per_example_loss
from core.world.models import ModelSpec, load_model


# ---------------------------------------------------------------------------- the planted toy
class Planted:
    """L_A = 1/2 x^T H x, H = 9 u1 u1^T + 4 u2 u2^T + eps I; the task L_F = 1/2 x^T F x + g^T x with
    g = w orthogonal to u1, u2 and F = I + beta (u1 w^T + w u1^T), so H_F g = w + beta u1; x = 0."""

    n, lam, beta = 40, (9.0, 4.0), 0.5

    def __init__(self, eps: float = 0.01):
        q, _ = np.linalg.qr(np.random.default_rng(0).standard_normal((self.n, 4)))
        self.u1, self.u2, self.w, self.r = q.T
        self.eps = eps
        self.H = self.lam[0] * np.outer(self.u1, self.u1) + self.lam[1] * np.outer(self.u2, self.u2)
        self.H += eps * np.eye(self.n)
        self.F = np.eye(self.n) + self.beta * (np.outer(self.u1, self.w) + np.outer(self.w, self.u1))
        self.x = torch.nn.Parameter(torch.zeros(self.n, dtype=torch.float64))
        self.params = {"x": self.x}

    def quad(self, m: np.ndarray, lin: np.ndarray | None = None):
        mt = torch.from_numpy(m)
        lt = torch.from_numpy(lin) if lin is not None else torch.zeros(self.n, dtype=torch.float64)
        return lambda: 0.5 * self.x @ mt @ self.x + lt @ self.x

    def safety(self) -> LossHessian:
        return LossHessian(self.params, [self.quad(self.H)])

    def task_examples(self) -> LossHessian:
        """Two examples whose mean gradient is g = w (they differ by +-0.3 r)."""
        return LossHessian(self.params, [self.quad(self.F, self.w + s * 0.3 * self.r) for s in (1.0, -1.0)])


def test_lanczos_returns_the_planted_eigenpairs():
    toy = Planted()
    vals, vecs, residuals = top_eigenpairs(toy.safety(), 2, 12)
    assert np.all(residuals < 1e-8)
    assert vals == pytest.approx([9.0 + toy.eps, 4.0 + toy.eps], rel=1e-8)
    assert abs(vecs[:, 0] @ toy.u1) == pytest.approx(1.0, abs=1e-8)
    assert abs(vecs[:, 1] @ toy.u2) == pytest.approx(1.0, abs=1e-8)


def test_hutchinson_is_exact_on_a_diagonal_and_unbiased_on_a_rotated_hessian():
    toy = Planted()
    diag = np.diag(np.linspace(0.0, 3.0, toy.n))
    assert hutchinson_trace(LossHessian(toy.params, [toy.quad(diag)]), 3) == pytest.approx(np.trace(diag))
    samples = hutchinson_samples(toy.safety(), 400)
    se = np.std(samples) / math.sqrt(len(samples))
    assert abs(np.mean(samples) - np.trace(toy.H)) < 3 * se


def test_kept_graph_products_are_the_closed_form_hessian_times_v():
    """On the quadratic toy every product through the one kept graph is H v exactly."""
    toy = Planted()
    op, rng = toy.safety(), np.random.default_rng(3)
    for _ in range(4):
        v = rng.standard_normal(toy.n)
        assert np.allclose(op.matvec(v), toy.H @ v, rtol=0, atol=1e-12)
    report = op.graph_report()
    assert report["mode"] == "reuse" and report["graph_builds"] == 1 and report["products"] == 4
    never = LossHessian(toy.params, [toy.quad(toy.H)], graph_memory_gb=0.0)
    assert np.allclose(never.matvec(v), toy.H @ v, atol=1e-12) and never.graph_report()["mode"] == "recompute"


def test_spectral_density_recovers_a_known_spectrum():
    """Diagonal H and normalised Rademacher probes: v^T H^p v = tr(H^p) / n exactly, and Lanczos
    quadrature with m nodes is exact up to degree 2m - 1, so the moments are exact; on a rotated H
    with two clusters (70% at 1, 30% at 10) the density's mass splits 0.7 / 0.3 and integrates to 1."""
    toy = Planted()
    spectrum = np.linspace(0.0, 3.0, toy.n) ** 2
    out = spectral_density(LossHessian(toy.params, [toy.quad(np.diag(spectrum))]), runs=3, steps=6)
    for p in (1, 2, 3, 4):
        assert out["moments"][f"p{p}"] == pytest.approx(np.mean(spectrum**p), rel=1e-9)
    assert out["trace"] == pytest.approx(spectrum.sum(), rel=1e-9)
    n = 200
    clusters = np.where(np.arange(n) < 140, 1.0, 10.0) + np.random.default_rng(1).normal(0, 0.05, n)
    q, _ = np.linalg.qr(np.random.default_rng(2).standard_normal((n, n)))
    x = torch.nn.Parameter(torch.zeros(n, dtype=torch.float64))
    h = torch.from_numpy(q @ np.diag(clusters) @ q.T)
    out = spectral_density(LossHessian({"x": x}, [lambda: 0.5 * x @ h @ x]), runs=8, steps=12)
    grid, density = np.array(out["grid"]), np.array(out["density"])
    step = grid[1] - grid[0]
    assert density.sum() * step == pytest.approx(1.0, abs=1e-3)
    assert density[grid < 5.5].sum() * step == pytest.approx(0.7, abs=0.05)
    assert out["moments"]["p1"] == pytest.approx(clusters.mean(), rel=0.05)
    assert out["moments"]["p2"] == pytest.approx(np.mean(clusters**2), rel=0.1)


def test_ritz_error_bound_takes_the_gap_estimate_once_separated():
    assert list(ritz_error_bounds(np.array([10.0, 5.0, 1.0]), np.array([0.1, 2.0]))) == pytest.approx([0.002, 2.0])


def test_geometry_recovers_planted_shares_conditions_and_taylor_coefficients():
    toy = Planted()
    config = CurvatureConfig(k=2, lanczos_steps=12, trace_probes=64)
    out = geometry(toy.safety(), toy.safety(), toy.task_examples(), config)
    lam1 = 9.0 + toy.eps
    assert out["safety_eigenvalues"] == pytest.approx([lam1, 4.0 + toy.eps], rel=1e-8)
    assert out["lambda_1"]["rayleigh_mean"] == pytest.approx(lam1)
    # H_F g = w + beta u1: share beta^2 / (1 + beta^2) = 0.2; g = w itself has none
    assert out["coupling"]["share"] == pytest.approx(0.2, abs=1e-9)
    assert out["coupling"]["gradient_share"] == pytest.approx(0.0, abs=1e-12)
    lo, hi = out["conditions"]["orthogonality"]["ci_low"], out["conditions"]["orthogonality"]["ci_high"]
    assert 0.0 <= lo <= hi < 1e-9
    # the concentration share is the top-k eigenvalues over the trace estimate; its interval holds the planted one
    planted_share = (13.0 + 2 * toy.eps) / (13.0 + toy.n * toy.eps)
    low = out["conditions"]["low_dimensional"]
    assert low["value"] == pytest.approx((lam1 + 4.0 + toy.eps) / out["safety_trace"])
    assert low["ci_low"] <= planted_share <= low["ci_high"]
    taylor = out["taylor"]
    assert taylor["c1"] == pytest.approx(0.0, abs=1e-12)  # stationary: grad L_A(0) = 0
    assert taylor["c2"] == pytest.approx(0.5 * toy.eps)  # 1/2 g^T H g with g = w
    assert taylor["kappa4"] == pytest.approx((toy.eps * (1 + toy.beta**2) + toy.beta**2 * 9.0) / 8)
    assert taylor["kappa4_topk"] == pytest.approx(toy.beta**2 * lam1 / 8)
    assert taylor["task_rayleigh"] == pytest.approx(1.0)


def test_coupling_share_and_angle():
    basis = np.eye(4)[:, :2]
    assert coupling(np.array([1.0, 0, 0, 0]), basis)["share"] == pytest.approx(1.0)
    off = coupling(np.array([1.0, 0, 1.0, 0]), basis)
    assert off["share"] == pytest.approx(0.5) and off["angle_deg"] == pytest.approx(45.0)
    assert coupling(np.array([0, 0, 0, 1.0]), basis)["angle_deg"] == pytest.approx(90.0)


def test_share_interval_follows_the_binomial_resampling_law():
    """Half the vectors e1, half e2, basis e1: a resample with X copies of e1 has share
    X^2 / (X^2 + (n - X)^2), X ~ Binomial(n, 1/2); the interval is that law's 2.5 and 97.5 percentiles."""
    n = 20
    vectors = [np.eye(3)[0]] * (n // 2) + [np.eye(3)[1]] * (n // 2)
    lo, hi = share_interval(vectors, np.eye(3)[:, :1])
    x_lo, x_hi = binom.ppf(0.025, n, 0.5), binom.ppf(0.975, n, 0.5)
    law = lambda x: x**2 / (x**2 + (n - x) ** 2)  # noqa: E731
    assert lo == pytest.approx(law(x_lo), abs=0.06) and hi == pytest.approx(law(x_hi), abs=0.06)


def test_conditions_verdicts_intervals_and_thresholds():
    config = CurvatureConfig(k=2)
    couple = {"share": 0.2, "angle_deg": 63.0, "gradient_share": 0.5}
    hold = conditions(
        np.array([50.0, 30.0]), 100.0, 10_000, couple, config, {"trace": (80.0, 125.0), "lambda_1": (40.0, 60.0)}
    )
    assert hold["low_dimensional"]["value"] == pytest.approx(0.8) and hold["all_hold"]
    assert (hold["low_dimensional"]["ci_low"], hold["low_dimensional"]["ci_high"]) == pytest.approx((0.64, 1.0))
    assert hold["sharp_curvature"]["value"] == pytest.approx(50.0 / (100.0 / 10_000))
    assert hold["sharp_curvature"]["ci_low"] == pytest.approx(40.0 * 10_000 / 125.0)
    assert hold["low_dimensional"]["resolved"] and not hold["orthogonality"]["holds"]
    flat = conditions(np.array([1.0, 1.0]), 100.0, 100, {"share": 0.0, "angle_deg": 90.0}, config)
    assert not any(flat[c]["holds"] for c in ("low_dimensional", "sharp_curvature", "coupling"))
    assert not flat["all_hold"]


# ---------------------------------------------------------------------------- power laws and the verdict
STEPS = list(range(0, 61, 4))


def _noisy(power: float, n: int = 24, seed: int = 0) -> np.ndarray:
    """Per-example curves L_i(t) = 1 + k_i t^p, k_i log-normal around 1e-6 * 40^(4 - p)."""
    t = np.asarray(STEPS, dtype=float)
    k = 1e-6 * 40 ** (4 - power) * np.exp(np.random.default_rng(seed).normal(0, 0.3, n))
    return 1.0 + k[:, None] * t[None, :] ** power


def test_power_law_fit_recovers_exact_exponents():
    for p in (1.0, 2.0, 4.0):
        fits = fit_power_laws(STEPS, [1.0 + 2e-6 * s**p for s in STEPS])
        assert fits["free"]["exponent"] == pytest.approx(p, abs=1e-9)
        assert fits[f"t^{int(p)}"]["r2"] == pytest.approx(1.0) if p in (2.0, 4.0) else True
    quartic = fit_power_laws(STEPS, [1.0 + 2e-6 * s**4 for s in STEPS])
    assert quartic["t^2"]["r2"] < 0.99 and quartic["t^4"]["kappa"] == pytest.approx(2e-6)


def test_drift_fit_interval_and_verdict_on_planted_exponents():
    quartic = fit_drift(STEPS, _noisy(4.0), offset=0.0)
    lo, hi = quartic["fits"]["free"]["ci_low"], quartic["fits"]["free"]["ci_high"]
    assert lo <= 4.0 <= hi and hi - lo < 0.5 and quartic["verdict"]["label"] == "t^4 supported"
    linear = fit_drift(STEPS, _noisy(1.0), offset=0.0)
    assert linear["fits"]["free"]["ci_high"] < 2.0 and linear["verdict"]["label"] == "not supported"
    quadratic = fit_drift(STEPS, _noisy(2.0), offset=0.0)
    assert quadratic["verdict"]["label"] == "not supported"
    falling = fit_drift(STEPS, 2.0 - (_noisy(4.0) - 1.0), offset=0.0)
    assert falling["verdict"]["label"] == "not resolvable"
    few = fit_drift(STEPS[:3], _noisy(4.0)[:, :3], offset=0.0)
    assert few["verdict"]["label"] == "not resolvable"


def test_gradient_descent_on_the_planted_toy_follows_the_quartic_law():
    """eps = 0: grad L_A = 0 and H_A g = 0, so L_A(t) - L_A(0) ~ kappa4 (lr (s - 1/2))^4 (module doc)."""
    toy = Planted(eps=0.0)
    scales = np.linspace(0.5, 2.0, 12)  # 12 probe examples: L_j = s_j L_A (one shape, bootstrap width ~ 0)
    h = torch.from_numpy(toy.H)
    probe = lambda: torch.stack([0.5 * s * (toy.x @ h @ toy.x) for s in scales])  # noqa: E731
    config = DriftConfig(steps=60, every=4, lr=1e-3)
    record = gradient_descent_drift([toy.x], [toy.quad(toy.F, toy.w)], probe, config)
    assert record["stationarity"]["safety_gradient_norm"] == 0.0
    assert record["stationarity"]["task_gradient_norm"] == pytest.approx(1.0)
    fitted = fit_drift(record["steps"], np.array(record["per_example"]).T)
    assert fitted["fits"]["free"]["exponent"] == pytest.approx(4.0, abs=0.05)
    assert fitted["verdict"]["label"] == "t^4 supported"
    kappa4 = np.mean(scales) * toy.beta**2 * 9.0 / 8  # (H_F g)^T H_A (H_F g) / 8 per unit of flow time
    assert fitted["fits"]["t^4"]["kappa"] == pytest.approx(kappa4 * config.lr**4, rel=0.05)
    on_steps = fit_drift(record["steps"], np.array(record["per_example"]).T, offset=0.0)
    assert on_steps["fits"]["free"]["exponent"] > 4.1  # GD's s(s-1) on the plain step clock


# ---------------------------------------------------------------------------- the causal LM
def _examples(n: int, tag: str) -> list[Example]:
    return [Example(f"{tag} {i}: name a colour number {i}", f"Colour {i} is blue.") for i in range(n)]


@pytest.fixture()
def operator(tiny_model_dir, tiny_adapter_dir, tokenizer):
    torch.manual_seed(0)
    model = load_model(ModelSpec(str(tiny_model_dir), str(tiny_adapter_dir)))
    params = select_parameters(model, "layers.1.self_attn.v_proj.lora")
    return HessianOperator(model, params, [encode(tokenizer, _examples(3, "h"))])


def test_hvp_matches_finite_difference_of_gradients(operator):
    assert operator.lm.start == 1  # layer 0 runs once, from the cache
    rng = np.random.default_rng(0)
    v = rng.standard_normal(operator.size)
    hv = operator.matvec(v)
    eps = 1e-3
    theta = [p.detach().clone() for p in operator.params]

    def grad_at(sign: float) -> np.ndarray:
        with torch.no_grad():
            for p, t, dv in zip(operator.params, theta, operator._split(v)):
                p.copy_(t + sign * eps * dv)
        return operator.gradient()

    fd = (grad_at(1.0) - grad_at(-1.0)) / (2 * eps)
    with torch.no_grad():
        for p, t in zip(operator.params, theta):
            p.copy_(t)
    assert np.linalg.norm(hv - fd) / np.linalg.norm(fd) < 1e-2


def test_lanczos_returns_true_eigenpairs_in_descending_order(operator):
    vals, vecs, residuals = top_eigenpairs(operator, 3, 60)
    assert list(vals) == sorted(vals, reverse=True)
    exact = np.linalg.eigvalsh(np.stack([operator.matvec(e) for e in np.eye(operator.size)]))[::-1][:3]
    for lam, v, r, true in zip(vals, vecs.T, residuals, exact):
        assert np.linalg.norm(operator.matvec(v) - lam * v) == pytest.approx(r, rel=1e-2, abs=1e-6)
        assert abs(lam - true) <= r + 1e-6 * abs(true) and lam <= true + 1e-6 * abs(true)


def test_cached_prefix_and_per_example_terms_match_the_full_model(tiny_model_dir, tokenizer):
    model = load_model(ModelSpec(str(tiny_model_dir)))
    params = select_parameters(model, "adapter", ("q_proj", "v_proj"), last_layers=1)
    assert sorted(params) == ["model.layers.1.self_attn.q_proj.weight", "model.layers.1.self_attn.v_proj.weight"]
    lm = CausalLoss(model, params)
    batches = encode_batches(tokenizer, _examples(5, "c"), 3)
    cached = lm.cache(batches)
    assert lm.start == 1 and "hidden" in cached[0]
    full = torch.cat([per_example_loss(model, b) for b in batches])
    assert torch.allclose(torch.cat([lm.losses(b) for b in cached]), full, atol=1e-5)
    assert torch.allclose(torch.stack([t() for t in lm.example_terms(cached)]), full, atol=1e-5)
    v = np.random.default_rng(1).standard_normal(sum(p.numel() for p in params.values()))
    batched = LossHessian(params, lm.batch_terms(cached)).matvec(v)
    per_example = np.mean(LossHessian(params, lm.example_terms(cached)).term_matvecs(v), axis=0)
    uncached = CausalLoss(model, params)
    uncached.start = 0
    whole = LossHessian(params, uncached.batch_terms(batches)).matvec(v)
    assert np.linalg.norm(batched - whole) < 1e-4 * np.linalg.norm(whole)
    assert np.linalg.norm(per_example - whole) < 1e-4 * np.linalg.norm(whole)


def test_kl_alignment_loss_is_stationary_and_its_hessian_is_the_fisher_matrix(tiny_model_dir, tokenizer):
    """At the teacher, KL(teacher || model) has zero gradient and Hessian J^T (diag p - p p^T) J
    (J: Jacobian of the logits), weighted 1 / (examples * counted tokens of the example)."""
    model = load_model(ModelSpec(str(tiny_model_dir)))
    batch = attach_teacher(model, [encode(tokenizer, _examples(3, "k") + [Example("k", "A longer answer here.")])])
    params = select_parameters(model, "adapter", ("q_proj", "v_proj"), last_layers=1)
    lm = CausalLoss(model, params)
    cached = lm.cache(batch)
    op = LossHessian(params, lm.batch_terms(cached))
    assert np.linalg.norm(op.gradient()) < 1e-6
    v = np.random.default_rng(2).standard_normal(op.size)
    hv = op.matvec(v)
    assert np.allclose(np.mean(LossHessian(params, lm.example_terms(cached)).term_matvecs(v), axis=0), hv, atol=1e-6)
    plist, vs = op.params, op._split(v)
    with sdpa_kernel(SDPBackend.MATH):  # double backward through attention
        logits, counted = lm.logits(cached[0])
        probe = torch.zeros_like(logits, requires_grad=True)
        jt = torch.autograd.grad(logits, plist, grad_outputs=probe, create_graph=True)
        jv = torch.autograd.grad(sum((a * b).sum() for a, b in zip(jt, vs)), probe)[0]  # J v, one row per token
    weight = (1.0 / (counted.sum(1).float() * counted.shape[0]))[counted.nonzero()[:, 0]]
    p = torch.softmax(logits.detach().float(), -1)
    m = weight[:, None] * (p * jv - p * (p * jv).sum(-1, keepdim=True))
    fisher_v = op._flat(torch.autograd.grad(logits, plist, grad_outputs=m.to(logits.dtype)))
    assert np.linalg.norm(hv - fisher_v) < 1e-4 * np.linalg.norm(fisher_v)


def test_kept_graph_products_agree_with_recomputed_ones(tiny_model_dir, tokenizer):
    """One forward and create_graph backward, then one backward per product, give today's products
    (a fresh double backward each) to 1e-6; a budget too small for the graph falls back to that path;
    an in-place change of the parameters drops the kept graph."""
    model = load_model(ModelSpec(str(tiny_model_dir)))
    params = select_parameters(model, "adapter", ("q_proj", "v_proj"), last_layers=1)
    batches = [encode(tokenizer, _examples(3, "g")), encode(tokenizer, _examples(2, "f"))]
    kept = HessianOperator(model, params, batches)
    fresh = HessianOperator(model, params, batches, graph_memory_gb=0.0)
    small = HessianOperator(model, params, batches, graph_memory_gb=1e-6)  # ~1 KiB
    rng = np.random.default_rng(4)
    for _ in range(3):
        v = rng.standard_normal(kept.size)
        want = fresh.matvec(v)
        for op in (kept, small):
            assert np.linalg.norm(op.matvec(v) - want) <= 1e-6 * np.linalg.norm(want)
    assert np.linalg.norm(kept.gradient() - fresh.gradient()) <= 1e-6 * np.linalg.norm(fresh.gradient())
    report = kept.graph_report()
    assert report["mode"] == "reuse" and report["graph_builds"] == 2 and report["terms_kept"] == 2
    assert 0 < report["retained_bytes"] < 2**30
    assert small.graph_report()["mode"] == "recompute" and small.graph_report()["graph_builds"] == 6
    assert fresh.graph_report()["mode"] == "recompute"
    with torch.no_grad():
        kept.params[0].add_(0.01)
    assert np.allclose(kept.gradient(), fresh.gradient(), atol=1e-7)
    assert np.linalg.norm(kept.matvec(v) - fresh.matvec(v)) <= 1e-6 * np.linalg.norm(want)
    assert kept.graph_builds == 4  # both batches rebuilt once


def test_lanczos_stopping_rule_gives_the_fixed_step_eigenvalues_with_fewer_products(tiny_model_dir, tokenizer):
    model = load_model(ModelSpec(str(tiny_model_dir)))
    params = select_parameters(model, "adapter", ("q_proj", "v_proj"), last_layers=1)
    op = HessianOperator(model, params, [encode(tokenizer, _examples(3, "h"))])
    fixed, stopped = {}, {}
    want, _, _ = top_eigenpairs(op, 4, 60, tol=0.0, info=fixed)
    calls = op.calls
    got, vecs, residuals = top_eigenpairs(op, 4, 60, tol=1e-6, info=stopped)
    assert fixed == {"steps": 60, "max_steps": 60, "tol": 0.0, "converged": False}
    assert stopped["converged"] and stopped["steps"] == op.calls - calls < 45
    assert np.max(np.abs(got - want)) <= 1e-5 * abs(want[0])
    for lam, v, r in zip(got, vecs.T, residuals):
        assert np.linalg.norm(op.matvec(v) - lam * v) == pytest.approx(r, rel=1e-2, abs=1e-6)


def test_k_out_of_range_and_empty_subset_are_errors(operator, tiny_model_dir):
    with pytest.raises(InputError, match="--k"):
        top_eigenpairs(operator, operator.size)
    with pytest.raises(InputError, match="matches no weight"):
        select_parameters(load_model(ModelSpec(str(tiny_model_dir))), "lora")


def test_curvature_on_the_aligned_model_and_the_fine_tune(tiny_model_dir, tiny_adapter_dir):
    pair = {"base": ModelSpec(str(tiny_model_dir)), "finetuned": ModelSpec(str(tiny_model_dir), str(tiny_adapter_dir))}
    config = CurvatureConfig(k=2, samples=3, trace_probes=2, layers=1, density_runs=2, density_steps=4)
    result = curvature(pair, _examples(4, "s"), _examples(4, "t"), config)
    assert result["parameters"] == {"params": "adapter", "targets": ["q_proj", "v_proj"], "layers": 1}
    aligned, tuned = result["aligned"], result["finetuned"]
    assert aligned["n_params"] == tuned["n_params"] == 32 * 32 + 16 * 32 and aligned["prefix_cached_layers"] == 1
    assert result["safety_eigenvalues"] == aligned["safety_eigenvalues"] != tuned["safety_eigenvalues"]
    assert result["conditions"] is not None and result["conditions"] == aligned["conditions"]
    for block in (aligned, tuned):
        c = block["conditions"]["coupling"]
        assert c["ci_low"] <= c["value"] + 1e-12 and c["value"] <= c["ci_high"] + 1e-12
        assert {"c1", "c2", "kappa4", "kappa4_topk"} <= set(block["taylor"])
        assert block["hvp_graph"]["safety"]["mode"] == block["hvp_graph"]["task"]["mode"] == "reuse"
        assert block["hvp_graph"]["safety"]["graph_builds"] == 1 and block["lanczos"]["steps"] >= 3
        density = block["density"]
        assert density["runs"] == 2 and len(density["grid"]) == len(density["density"]) and density["trace"] > 0


def test_probe_keeps_the_aligned_models_own_refusals(monkeypatch, tiny_model_dir):
    from dataclasses import replace

    import core.geometry.curvature as C

    answers = ["I'm sorry, I can't help with that.", "Sure, here is how:", "I cannot assist with this request."]
    monkeypatch.setattr(
        C, "own_answers", lambda load, prompts, *a: [replace(p, response=r) for p, r in zip(prompts, answers)]
    )
    probe, refusals_only = C.probe_examples(ModelSpec(str(tiny_model_dir)), "curvature", 0, 8, None)
    assert refusals_only and [e.response for e in probe] == [answers[0], answers[2]]
    answers[2] = "Step one:"
    probe, refusals_only = C.probe_examples(ModelSpec(str(tiny_model_dir)), "curvature", 0, 8, None)
    assert not refusals_only and len(probe) == 3  # fewer than 2 refusals: every answer is kept


def test_drift_monitor_records_the_alignment_loss_on_schedule(tiny_model_dir):
    rule = {"params": "adapter", "targets": ["q_proj", "v_proj"], "layers": 1}
    result = drift_monitor(
        ModelSpec(str(tiny_model_dir)),
        rule,
        _examples(8, "t"),
        _examples(4, "p"),
        DriftConfig(steps=6, every=2, lr=1e-1),
    )
    assert result["steps"] == [0, 2, 4, 6] and len(result["per_example"]) == 4
    assert len(set(result["alignment_loss"])) > 1 and result["task_loss"][-1] < result["task_loss"][0]
    assert {"free", "t^2", "t^4"} <= set(result["fits"]) and result["fits"]["free"]["time_offset"] == 0.5
    assert result["verdict"]["label"] in {"t^4 supported", "not supported", "not resolvable"}
    assert result["stationarity"]["task_gradient_norm"] > 0


def test_the_command_answers_on_a_lora_pair(tiny_model_dir, tiny_adapter_dir):
    from core.base.progress import Progress
    from core.geometry.registry import ANALYSES
    from core.service.commands import parser

    argv = ["curvature", "--base", str(tiny_model_dir), "--finetuned", str(tiny_adapter_dir), "--k", "1"]
    args = parser().parse_args(argv + ["--samples", "2", "--drift-steps", "2", "--every", "1", "--layers", "1"])
    out = ANALYSES["curvature"].command(args, Progress())
    assert set(out) >= {"aligned", "finetuned", "drift", "probe", "parameters", "conditions", "safety_eigenvalues"}
    assert out["probe"]["loss"] == "kl" and out["aligned"]["stationarity"]["safety_gradient_norm"] < 1e-5
    assert out["drift"]["steps"] == [0, 1, 2] and out["drift"]["alignment_loss"][0] == pytest.approx(0.0, abs=1e-6)
    assert {"dominant", "quartic_overtakes_at_step", "lr_times_task_curvature"} <= set(out["drift"]["predicted"])
