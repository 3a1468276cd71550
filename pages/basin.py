"""Safety basin: attack success under random weight perturbation (1-D lines, a 2-D plane) and the VISAGE score."""

import streamlit as st

from core.geometry.basin import BasinConfig
from core.present import figures
from pages import ui

ui.page_header(
    "Safety basin",
    "Harmful-prompt success rate as the weights move along random directions; "
    "VISAGE = mean of (100 - ASR) over the plane (higher: a wider safe basin).",
)
_, opts = ui.options(BasinConfig, "basin")
argv = ["basin", *ui.pair_args(), *opts]
result = ui.analysis(argv, "safety basin", remember="basin")
if result:
    cols = st.columns(len(result))
    for col, (name, r) in zip(cols, result.items()):
        col.metric(
            f"VISAGE, {name}",
            f"{r['visage']:.1f}",
            help=f"1-D: {r['visage_1d']:.1f}; unperturbed ASR {r['center_asr']:.0f}%",
        )
    ui.figure(figures.basin_curves(result), "safety-basin-curves")
    if any(r.get("plane") for r in result.values()):
        ui.figure(figures.basin_plane(result), "safety-basin-plane")
    ui.figure(figures.visage_bars(result), "visage")
