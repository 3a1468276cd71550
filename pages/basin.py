"""Safety basin: attack success under random weight perturbation (1-D lines, a 2-D plane), the basin
radius and the VISAGE score, within a range fitted on the aligned model."""

import streamlit as st

from core.geometry.basin import BasinConfig
from core.present import figures
from pages import ui

ui.page_header(
    "Safety basin",
    "Harmful-prompt success rate as the weights move along random directions, within ± a multiple of the "
    "aligned model's basin edge (the same range for every model). VISAGE (Peng et al.) = mean of (100 - ASR) "
    "inside each line's basin; the basin radius is how far out the ASR stays below the edge.",
)
_, opts = ui.options(BasinConfig, "basin")
argv = ["basin", *ui.pair_args(), *opts, *ui.scaleout()]
result = ui.analysis(argv, "safety basin", remember="basin")
if result:
    ui.preset_note(BasinConfig, "basin", opts)
    cols = st.columns(len(result))
    for col, (name, r) in zip(cols, result.items()):
        lo, hi = r.get("visage_ci") or (float("nan"), float("nan"))
        col.metric(
            f"VISAGE, {name}",
            f"{r['visage']:.1f}",
            help=f"95% bootstrap interval over prompts [{lo:.1f}, {hi:.1f}]; basin radius "
            f"{r.get('basin_radius', float('nan')):.3f} of each tensor's norm; unperturbed ASR {r['center_asr']:.0f}%",
        )
    fit = next(iter(result.values())).get("radius_fit") or {}
    if fit.get("fitted"):
        st.caption(
            f"Sampled range ±{fit['radius']:.3f} = {fit['multiple']:g} x the aligned model's largest basin edge "
            f"{fit['edge']:.3f} (ASR > {fit['edge_asr']:g}%, found by bisection)"
            + ("; an edge lay beyond the search bound." if fit.get("censored") else ".")
        )
    ui.table(figures.basin_table(result))
    ui.figure(figures.basin_curves(result), "safety-basin-curves")
    if any(r.get("plane") for r in result.values()):
        ui.figure(figures.basin_plane(result), "safety-basin-plane")
    ui.figure(figures.visage_bars(result), "visage")
