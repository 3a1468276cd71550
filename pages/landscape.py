"""Landscape: gradient-informed 3D loss surfaces, the Laplacian structural difference, cross-sections."""

import numpy as np
import streamlit as st

from core.geometry.landscape import LandscapeConfig
from core.present import figures
from pages import ui

ui.page_header(
    "Loss landscape",
    "Surfaces of the loss around each model along two gradient-informed directions; "
    "the structural difference compares their Laplacians (paper 1, eq. 8).",
)
values, opts = ui.options(LandscapeConfig, "landscape")
argv = ["landscape", *ui.pair_args(), *opts]


def partial(rows: list) -> None:
    """Rows of each surface appear as they finish."""
    grid, radius = values["grid"], values["radius"]
    coords = np.linspace(-radius, radius, grid).tolist()
    surfaces: dict = {}
    for row in rows:
        set_name, model = row["label"].split("/")
        z = surfaces.setdefault(set_name, {}).setdefault(model, [[None] * grid for _ in range(grid)])
        z[row["row"]] = row["values"]
    ui.chart(figures.landscape_surfaces({"coords": coords, "surfaces": surfaces}), "landscape-partial")


result = ui.analysis(argv, "loss landscape", partial, remember="landscape")
if result:
    diff = result["structural_difference"]
    cols = st.columns(len(diff))
    for col, (name, value) in zip(cols, diff.items()):
        tip = (
            "100 x (1 - Pearson r of the two surfaces' Laplacians); "
            f"cosine of the two directions {result['cosine'][name]:.3f}"
        )
        col.metric(f"Structural difference, {name}", f"{value:.2f}%", help=tip)
    ui.figure(figures.landscape_surfaces(result), "loss-landscapes")
    ui.figure(figures.cross_section_figure(result), "landscape-cross-sections")
