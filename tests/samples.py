"""Small synthetic results with the engine's schemas, shared by the figure and page tests."""

from __future__ import annotations

import numpy as np

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
        "structural_difference": {s: 12.5 for s in sets},
        "seconds": {},
    }


def curvature_result(drift: bool = True) -> dict:
    out = {
        "safety_eigenvalues": [50.0, 20.0, 8.0, 3.0],
        "task_eigenvalues": [30.0, 10.0, 2.0, 1.0],
        "safety_trace": 200.0,
        "n_params": 10_000,
        "coupling": {"share": 0.3, "angle_deg": 56.8, "gradient_norm": 1.2},
        "conditions": {
            "low_dimensional": {
                "value": 0.4,
                "threshold": 0.3,
                "holds": True,
                "what": "share of tr(H) in the top 4 eigenvalues",
            },
            "sharp_curvature": {
                "value": 2500.0,
                "threshold": 10.0,
                "holds": True,
                "what": "lambda_1 / mean eigenvalue",
                "lambda_1": 50.0,
            },
            "coupling": {
                "value": 0.3,
                "threshold": 0.5,
                "holds": False,
                "what": "share of the task gradient",
                "angle_deg": 56.8,
            },
            "all_hold": False,
        },
    }
    if drift:
        steps = [0, 4, 8, 12, 16]
        losses = [1.0 + 0.001 * t**2 for t in steps]
        out["drift"] = {
            "steps": steps,
            "alignment_loss": losses,
            "fits": {
                "t^2": {"exponent": 2.0, "kappa": 0.001, "r2": 1.0},
                "t^4": {"exponent": 4.0, "kappa": 1e-6, "r2": 0.8},
                "free": {"exponent": 2.0, "kappa": 0.001, "r2": 1.0},
            },
        }
    return out


def basin_result(plane: bool = True) -> dict:
    out = {}
    for k, name in enumerate(("base", "finetuned", "curvature")):
        r = {
            "center_asr": 10.0 * k,
            "coords": COORDS,
            "lines": [[100.0, 40.0, 10.0 * k, 50.0, 100.0], [90.0, 30.0, 10.0 * k, 20.0, 80.0]],
            "visage": 60.0 - k,
            "visage_1d": 55.0 - k,
            "visage_basin": 70.0 - k,
            "seconds": 1.0,
        }
        if plane:
            r.update(
                {
                    "plane_coords": [-0.5, 0.0, 0.5],
                    "plane": [[100, 50, 100], [40, 10 * k, 30], [100, 60, 100]],
                    "plane_cosine": 0.0,
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
            "visage": float("nan"),
        },
        "after": {"harmful_rate": 19.0, "prefill_asr": 91.0, "task_exact_match": 88.0, "over_refusal": 23.0},
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
            "wall_s": 0.0,
        }
        for i, m in enumerate(("base", "finetuned", "curvature", "gradient-ascent"))
    ]
    return {"table": rows, "runs": {}, "skipped": []}
