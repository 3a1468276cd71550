"""Small synthetic results with the engine's schemas, shared by the figure and page tests."""

from __future__ import annotations

import numpy as np

from core.world.data import Example

COORDS = [-0.5, -0.25, 0.0, 0.25, 0.5]


def correlation_result() -> dict:
    rng = np.random.default_rng(0)
    out = {}
    for k, name in enumerate(("harmful", "task", "general")):
        base = rng.uniform(0.5, 3.0, 6)
        ft = base + rng.normal(0, 0.2, 6) + 0.3 * k
        out[name] = {
            "r": 0.9 - 0.1 * k,
            "ci_low": 0.5,
            "ci_high": 0.97,
            "p_value": 1e-3,
            "n": 6,
            "mean_loss_base": float(base.mean()),
            "mean_loss_finetuned": float(ft.mean()),
            "mean_loss_base_ci": [float(base.mean()) - 0.2, float(base.mean()) + 0.25],
            "mean_loss_finetuned_ci": [float(ft.mean()) - 0.3, float(ft.mean()) + 0.2],
            "null_r": [0.95 - 0.2 * k, 0.97 - 0.2 * k, 0.99 - 0.2 * k],
            "null_r_mean": 0.97 - 0.2 * k,
            "null_r_min": 0.95 - 0.2 * k,
            "null_r_max": 0.99 - 0.2 * k,
            "null_n": 6,
            "delta_norm": 1.5,
            "pairs": [[float(b), float(f)] for b, f in zip(base, ft)],
            "prompts": [f"{name} prompt {i} " + "x" * 200 for i in range(6)],
        }
    return out


def _surface(offset: float) -> list[list[float]]:
    a = np.array(COORDS)
    return (offset + a[:, None] ** 2 + 2 * a[None, :] ** 2).tolist()


def landscape_result(sets=("harmful", "benign"), models=("base", "finetuned")) -> dict:
    surfaces = {s: {m: _surface(i + 2 * j) for j, m in enumerate(models)} for i, s in enumerate(sets)}
    return {
        "coords": COORDS,
        "surfaces": surfaces,
        "cross_sections": {
            s: {m: {"d1": [r[2] for r in z], "d2": z[2]} for m, z in by.items()} for s, by in surfaces.items()
        },
        "cosine": {s: 0.01 for s in sets},
        "cosine_second_seeds": {s: -0.02 for s in sets},
        "radius": 0.5,
        "radius_fit": {"radius": 0.5, "fitted": True, "capped": False, "set": "benign", "rise": 0.5},
        "coefficient_units": "weight-space distance",
        "samples": {s: {"a": 4, "b": 4} for s in sets},
        "structural_difference": {s: 12.5 for s in sets},
        "structural_difference_interval": {s: [8.0, 20.0] for s in sets},
        "structural_difference_floor": {s: 3.0 for s in sets},
        "structural_difference_repeats": {
            s: {
                "half_a": 11.0,
                "half_b": 14.0,
                "half_a_second_seeds": 13.0,
                "same_model_base": 3.0,
                "same_model_finetuned": 2.0,
            }
            for s in sets
        },
        "seconds": {},
    }


def _part(value: float, ci: tuple[float, float], threshold: float, holds: bool, what: str) -> dict:
    return {
        "value": value,
        "ci_low": ci[0],
        "ci_high": ci[1],
        "threshold": threshold,
        "holds": holds,
        "resolved": True,
        "what": what,
    }


def _curvature_block(eigenvalues: list[float], trace: float, coupling_share: float) -> dict:
    sharp = eigenvalues[0] * 10_000 / trace
    return {
        "n_params": 10_000,
        "safety_eigenvalues": eigenvalues,
        "eigenvalue_tolerance": 1e-3,
        "lambda_1": {
            "value": eigenvalues[0],
            "rayleigh_mean": eigenvalues[0],
            "ci": [0.8 * eigenvalues[0], 1.2 * eigenvalues[0]],
        },
        "safety_trace": trace,
        "safety_trace_ci": [0.9 * trace, 1.1 * trace],
        "coupling": {
            "share": coupling_share,
            "angle_deg": 56.8,
            "ci_low": 0.5 * coupling_share,
            "ci_high": 1.5 * coupling_share,
            "gradient_share": 0.002,
            "gradient_angle_deg": 87.4,
            "gradient_norm": 1.2,
            "acceleration_norm": 3.4,
        },
        "stationarity": {"safety_gradient_norm": 0.1, "task_gradient_norm": 1.2, "ratio": 0.083, "cosine": 0.01},
        "taylor": {"c1": -0.001, "c2": 0.02, "kappa4": 0.5, "kappa4_topk": 0.4, "task_rayleigh": 12.0},
        "conditions": {
            "low_dimensional": _part(
                sum(eigenvalues) / trace, (0.3, 0.5), 0.3, True, "share of tr(H) in the top 4 eigenvalues"
            ),
            "sharp_curvature": {
                **_part(sharp, (0.8 * sharp, 1.2 * sharp), 10.0, True, "lambda_1 / mean eigenvalue"),
                "lambda_1": eigenvalues[0],
            },
            "coupling": {
                **_part(coupling_share, (0.15, 0.45), 0.5, False, "share of H_F g in the top-k safety eigenspace"),
                "angle_deg": 56.8,
            },
            "all_hold": False,
            "orthogonality": _part(0.002, (0.001, 0.004), 0.01, True, "share of the task gradient g"),
        },
        "prefix_cached_layers": 24,
        "hvp_calls": {"safety_lanczos": 40, "safety_total": 50, "task": 1},
        "seconds": 100.0,
    }


def curvature_result(drift: bool = True) -> dict:
    """Aligned and fine-tuned blocks (the top-level keys repeat the aligned one), the drift."""
    aligned = _curvature_block([50.0, 20.0, 8.0, 3.0], 200.0, 0.3)
    out = {
        "parameters": {"params": "adapter", "targets": ["q_proj", "v_proj"], "layers": 6},
        "aligned": aligned,
        "finetuned": _curvature_block([30.0, 10.0, 2.0, 1.0], 100.0, 0.1),
        **{k: aligned[k] for k in ("n_params", "safety_eigenvalues", "safety_trace", "coupling", "conditions")},
        "probe": {"split": "curvature", "examples": 32, "answers": ["I'm sorry, I can't help with that."]},
    }
    if drift:
        steps = [0, 4, 8, 12, 16]
        losses = [1.0 + 0.001 * t**2 for t in steps]
        out["drift"] = {
            "steps": steps,
            "alignment_loss": losses,
            "task_loss": [2.0 - 0.01 * t for t in steps],
            "fits": {
                "t^2": {"exponent": 2.0, "kappa": 0.001, "r2": 1.0},
                "t^4": {"exponent": 4.0, "kappa": 1e-6, "r2": 0.8},
                "free": {"exponent": 2.0, "kappa": 0.001, "r2": 1.0, "ci_low": 1.9, "ci_high": 2.1},
            },
            "final_rise": {"value": 0.256, "ci_low": 0.2, "ci_high": 0.3},
            "verdict": {"label": "not supported", "rule": "the rule", "tolerance": 0.25},
            "stationarity": {"safety_gradient_norm": 0.1, "task_gradient_norm": 1.2, "ratio": 0.083, "cosine": 0.01},
            "predicted": {
                "per_step": {"t^1": -1e-6, "t^2": 2e-8, "t^4": 5e-13},
                "dominant": "t^1",
                "quartic_overtakes_at_step": 60.0,
                "lr_times_task_curvature": 0.02,
            },
            "loss": "kl",
            "n_params": 10_000,
        }
    return out


def basin_result(plane: bool = True) -> dict:
    out = {}
    for k, name in enumerate(("base", "finetuned", "curvature")):
        lines = [[100.0, 40.0, 10.0 * k, 50.0, 100.0], [90.0, 30.0, 10.0 * k, 20.0, 80.0]]
        r = {
            "center_asr": 10.0 * k,
            "center_asr_ci": [max(0.0, 10.0 * k - 8), 10.0 * k + 20],
            "coords": COORDS,
            "lines": lines,
            "lines_ci": [[[max(0.0, v - 15), min(100.0, v + 15)] for v in line] for line in lines],
            "visage": 60.0 - k,
            "visage_ci": [50.0 - k, 70.0 - k],
            "visage_per_direction": [58.0 - k, 62.0 - k],
            "visage_1d": 55.0 - k,
            "visage_1d_ci": [48.0 - k, 61.0 - k],
            "basin_radius": 0.1 - 0.01 * k,
            "basin_radius_ci": [0.08 - 0.01 * k, 0.12 - 0.01 * k],
            "basin_edges": [[0.1, 0.1], [0.1, 0.1]],
            "basin_edges_censored": [[False, False], [False, False]],
            "span_edges": [[-0.25, 0.25], [-0.25, 0.25]],
            "edge_asr": 50.0,
            "radius": 0.5,
            "radius_fit": {"fitted": True, "radius": 0.5, "edge": 0.25, "multiple": 2.0, "edge_asr": 50.0},
            "prompts": 16,
            "judge": "core.world.judge:keyword_judge@0123456789abcdef",
            "seconds": 1.0,
        }
        if plane:
            r.update(
                {
                    "plane_coords": [-0.5, 0.0, 0.5],
                    "plane": [[100, 50, 100], [40, 10 * k, 30], [100, 60, 100]],
                    "plane_ci": [[[0.0, 100.0]] * 3] * 3,
                    "plane_cosine": 0.0,
                    "visage_plane": 34.0 - k,
                    "visage_plane_ci": [30.0 - k, 38.0 - k],
                }
            )
        out[name] = r
    return out


def restoration_record(n_steps: int = 4) -> dict:
    steps = [
        {
            "step": i,
            "forget_loss": 0.3 + 0.3 * i,
            "retain_loss": 0.01 + 0.01 * i,
            "harmful_rate": 70.0 - 15 * i,
            "task_exact_match": 100.0 - 4 * i,
            "forget_r_base": 0.9 - 0.02 * i,
            "retain_r_base": 0.1 + 0.05 * i,
            "distance_to_finetuned": 1.5 * i,
            "distance_to_base": 6.6 + 0.3 * i,
            "wall_s": 30.0 * (i + 1),
        }
        for i in range(n_steps)
    ]
    return {
        "id": "abc",
        "method": "curvature",
        "config": {},
        "status": "running" if n_steps < 4 else "done",
        "steps": steps,
        "before": {
            "harmful_rate": 76.0,
            "prefill_asr": 96.0,
            "task_exact_match": 93.0,
            "over_refusal": 1.0,
            "general_capability": 41.0,
            "capability": {"tasks": {}, "mean_acc": {"rate": 41.0}, "items": 40},
            "visage": float("nan"),
        },
        "after": {
            "harmful_rate": 19.0,
            "prefill_asr": 91.0,
            "task_exact_match": 88.0,
            "over_refusal": 23.0,
            "general_capability": 39.5,
        },
    }


def trajectory_result() -> dict:
    xs, ys = [-1.0, 0.0, 1.0, 2.0], [-1.0, 0.0, 1.0]
    out = {}
    for k, lr in enumerate(("0.05", "0.01")):
        out[lr] = {
            "x": xs,
            "y": ys,
            "objective": [[x + y + k for x in xs] for y in ys],
            "paths": {
                "curvature": [[0, 0], [0.5, 0.2], [1.0, 0.5]],
                "gradient-ascent": [[0, 0], [0.8, -0.4], [1.6, -0.8]],
            },
            "explained_variance": [0.73, 0.2],
            "final_forget_loss": {"curvature": 1.2, "gradient-ascent": 2.0},
            "final_retain_loss": {"curvature": 0.05, "gradient-ascent": 0.4},
            "runs": {},
        }
    return out


def compare_result() -> dict:
    rows = [
        {
            "model": m,
            "harmful_rate": 70.0 - 10 * i,
            "prefill_asr": 90.0,
            "task_exact_match": 90.0 - i,
            "over_refusal": 1.0 + i,
            "general_capability": 40.0 - i,
            "general_capability_ci": f"{35.0 - i}–{45.0 - i}",
            "wall_s": 0.0,
        }
        for i, m in enumerate(("base", "finetuned", "curvature", "gradient-ascent"))
    ]
    return {"table": rows, "runs": {}, "skipped": []}


def arithmetic_examples(n: int, tag: str) -> list[Example]:
    """``n`` short question-answer pairs (prompt tagged with ``tag``) for the tiny-model geometry tests."""
    return [Example(f"{tag} question number {i}: what is {i} plus {i * 3}?", f"It is {i + i * 3}.") for i in range(n)]
