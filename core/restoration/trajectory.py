"""Optimizer trajectories in a PCA plane (paper 1, appendix C.2, Figures 8-9).

The curvature-aware and the first-order (gradient-ascent) restorations run at fixed learning
rates (default 0.01 and 0.05, the paper's), each storing its LoRA parameter vector after every
iteration. Per learning rate, PCA (scikit-learn) of all snapshots of both runs gives a 2-D
plane; the combined objective ``J = L_forget - L_retain`` (higher is better: forget loss up,
retain loss down) is evaluated on a grid over that plane for the contour, and each run's path
is projected onto it.

A fixed learning rate is not scale-free: at the paper's 0.01 and 0.05 on the per-token mean
loss the restorations use, a step moves the demo's forget loss by ~2e-4 (five steps at 0.05 took
it from 0.3445 to 0.3516 for both methods), a path with no restoration on it. The runs and the
contour therefore use each answer's summed token loss (``token_loss="sum"``), our reading of
eq. 1 (the sequence's negative log-likelihood): the first-order step grows with the answer's
length while ``H^-1 g`` keeps its size. Measured on the demo (2026-12-05, monitor's forget loss
per token): at lr 0.01 three first-order steps take it 0.354 -> 0.370 -> 0.392 -> 0.426 (monitor
harmful rate 75% -> 62.5%), the curvature-aware steps 0.354 -> 0.357 (0.362 after two at 0.05),
so at the paper's rates the curvature-aware path stays near its start. ``token_loss="mean"``
gives the per-token paths.

Beside them (``restoration``, on by default), the same view of the actual restoration runs: the
stored default ``curvature`` and ``gradient-ascent`` runs of this pair and seed (as ``restore`` and
``compare`` make them: trust region, B.2 step), both paths in one PCA plane fitted on both runs'
snapshots, over the same objective. Runs that are not stored yet are named, not started (each is a
full restoration with its evaluation).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from sklearn.decomposition import PCA

from core.base.cache import memoize
from core.base.errors import InputError
from core.base.options import option
from core.base.progress import Progress
from core.restoration.data import restoration_data
from core.restoration.methods.curvature import GradientAscentConfig, InfluenceConfig, LoraObjective
from core.restoration.monitor import MonitorConfig
from core.restoration.registry import method
from core.restoration.runner import RunRequest, restore, run_id
from core.restoration.store import load_record, trajectory
from core.world.models import ModelSpec, fingerprint, load_model, load_tokenizer

# The paths are what these runs are for; a lighter per-step monitor keeps four runs affordable.
TRAJECTORY_MONITOR = MonitorConfig(harmful_tokens=8, task_tokens=12, loss_examples=8)


@dataclass(frozen=True)
class TrajectoryConfig:
    lrs: tuple = option((0.01, 0.05), "learning rates of the fixed-rate runs (C.2's two)")
    iterations: int = option(5, "steps per run (pairs recomputed at each)", low=1, high=100)
    pairs: int = 5  # L-BFGS pairs per step (fewer than a restoration's 10, to keep 4 runs affordable on 2 cores)
    grid: int = option(7, "contour points per axis", low=3, high=51)
    margin: float = 0.25  # grid extends this fraction beyond the paths' range on each side
    examples: int = 16  # forget and retain examples per contour point
    restoration: bool = option(
        True, "also the plane of the stored default curvature and gradient-ascent restoration runs"
    )
    token_loss: str = option(
        "sum",
        "each answer's loss in the fixed-rate runs and the contour: sum over its tokens (eq. 1, where the "
        "paper's learning rates apply) or mean",
        choices=("sum", "mean"),
    )

    def runs(self) -> list[tuple[str, float, InfluenceConfig]]:
        out = []
        for lr in self.lrs:
            common = dict(iterations=self.iterations, lr=lr, token_loss=self.token_loss)
            out.append(("curvature", lr, InfluenceConfig(pairs=self.pairs, **common)))
            out.append(("gradient-ascent", lr, GradientAscentConfig(**common)))
        return out


def _plane(paths: dict[str, np.ndarray]) -> tuple[PCA, dict[str, np.ndarray]]:
    stacked = np.concatenate(list(paths.values()))
    pca = PCA(n_components=2).fit(stacked)
    return pca, {name: pca.transform(p) for name, p in paths.items()}


def _contour(
    obj: LoraObjective,
    pca: PCA,
    projected: dict[str, np.ndarray],
    forget,
    retain,
    config: TrajectoryConfig,
    progress: Progress,
) -> dict:
    pts = np.concatenate(list(projected.values()))
    lo, hi = pts.min(0), pts.max(0)
    pad = (hi - lo) * config.margin + 1e-8
    xs = np.linspace(lo[0] - pad[0], hi[0] + pad[0], config.grid)
    ys = np.linspace(lo[1] - pad[1], hi[1] + pad[1], config.grid)
    values = np.zeros((config.grid, config.grid))
    for i, y in enumerate(ys):
        for j, x in enumerate(xs):
            theta = pca.inverse_transform(np.array([[x, y]]))[0]
            obj.set(torch.from_numpy(theta.astype(np.float32)))  # set() copies onto the model's device
            values[i, j] = obj.loss(forget) - obj.loss(retain)
        progress.update(
            (i + 1) / config.grid, f"contour row {i + 1}/{config.grid}", {"row": i, "values": values[i].tolist()}
        )
    return {"x": xs.tolist(), "y": ys.tolist(), "objective": values.tolist()}


def trajectory_comparison(
    pair: dict[str, ModelSpec],
    seed: int = 0,
    config: TrajectoryConfig = TrajectoryConfig(),
    progress: Progress | None = None,
) -> dict:
    """Run both methods at each learning rate and lay their paths over the objective contour."""
    if config.grid < 3:
        raise InputError(f"Contour grid {config.grid} is too small.", "use --grid 3 or more.")
    progress = progress or Progress()
    fixed = {k: v for k, v in asdict(config).items() if k != "restoration"}  # the fixed-rate runs' part
    key = {"models": [fingerprint(s) for s in pair.values()], "seed": seed, "config": fixed}

    def compute() -> dict:
        runs = config.runs()
        records = {}
        for k, (name, lr, cfg) in enumerate(runs):
            rec = restore(
                pair,
                RunRequest(name, cfg, seed, monitor=TRAJECTORY_MONITOR, evaluate=False),
                progress=progress.stage(k / len(runs) * 0.7, (k + 1) / len(runs) * 0.7),
            )
            records[(name, lr)] = rec
        data = restoration_data(pair["finetuned"], seed)
        model = load_model(pair["finetuned"])
        obj = LoraObjective(model, load_tokenizer(pair["finetuned"]), 16, config.token_loss)
        out = {}
        for i, lr in enumerate(config.lrs):
            paths = {name: trajectory(records[(name, lr)]) for name in ("curvature", "gradient-ascent")}
            pca, projected = _plane(paths)
            stage = progress.stage(0.7 + 0.3 * i / len(config.lrs), 0.7 + 0.3 * (i + 1) / len(config.lrs))
            contour = _contour(
                obj, pca, projected, data.forget[: config.examples], data.retain[: config.examples], config, stage
            )
            out[str(lr)] = {
                "paths": {name: p.tolist() for name, p in projected.items()},
                "explained_variance": pca.explained_variance_ratio_.tolist(),
                "runs": {name: records[(name, lr)]["id"] for name in paths},
                "final_forget_loss": {name: records[(name, lr)]["steps"][-1]["forget_loss"] for name in paths},
                "final_retain_loss": {name: records[(name, lr)]["steps"][-1]["retain_loss"] for name in paths},
                **contour,
            }
        return out

    result = memoize("trajectory-v3", key, compute)  # v3: the summed token loss by default
    if config.restoration:
        result = {**result, RESTORATION: restoration_plane(pair, seed, config, progress=progress.stage(0.95, 1.0))}
    progress.update(1.0, "trajectories done", result)
    return result


RESTORATION = "restoration runs"  # the result's key of the actual runs' plane (beside the learning rates)
PATH_METHODS = ("curvature", "gradient-ascent")


def restoration_plane(
    pair: dict[str, ModelSpec],
    seed: int = 0,
    config: TrajectoryConfig = TrajectoryConfig(),
    requests: dict[str, RunRequest] | None = None,
    progress: Progress | None = None,
) -> dict:
    """The stored runs of ``requests`` (default: each of ``PATH_METHODS`` with its default config, the
    runs ``restore`` and ``compare`` make) in one PCA plane fitted on both runs' snapshots, over the
    objective contour; ``{"missing": [...]}`` naming the runs not stored (done, with snapshots) yet."""
    progress = progress or Progress()
    requests = requests or {name: RunRequest(name, method(name).config(), seed) for name in PATH_METHODS}
    records = {name: load_record(run_id(pair, r)) for name, r in requests.items()}
    missing = [
        name for name, rec in records.items() if not rec or rec.get("status") != "done" or trajectory(rec) is None
    ]
    if missing:
        return {"missing": missing, "note": "run " + ", ".join(f"`restore --method {m}`" for m in missing) + " first"}
    key = {
        "runs": {name: rec["id"] for name, rec in records.items()},
        "grid": config.grid,
        "margin": config.margin,
        "examples": config.examples,
    }

    def compute() -> dict:
        paths = {name: trajectory(rec) for name, rec in records.items()}
        pca, projected = _plane(paths)
        data = restoration_data(pair["finetuned"], seed)
        obj = LoraObjective(load_model(pair["finetuned"]), load_tokenizer(pair["finetuned"]), 16)
        contour = _contour(
            obj, pca, projected, data.forget[: config.examples], data.retain[: config.examples], config, progress
        )
        return {
            "paths": {name: p.tolist() for name, p in projected.items()},
            "explained_variance": pca.explained_variance_ratio_.tolist(),
            "runs": key["runs"],
            "steps": {name: len(p) for name, p in paths.items()},
            "final_forget_loss": {name: rec["steps"][-1]["forget_loss"] for name, rec in records.items()},
            "final_retain_loss": {name: rec["steps"][-1]["retain_loss"] for name, rec in records.items()},
            **contour,
        }

    return memoize("trajectory-runs-v1", key, compute)
