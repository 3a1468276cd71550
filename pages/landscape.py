"""Landscape: gradient-informed 3D loss surfaces, the Laplacian structural difference, cross-sections."""
import numpy as np
import streamlit as st

from core.present import figures
from pages import ui

ui.page_header("Loss landscape", "Surfaces of the loss around each model along two gradient-informed directions; the structural difference compares their Laplacians (paper 1, eq. 8).")
with st.sidebar:
    grid = st.number_input("Grid points per axis", 3, 51, 9)
    radius = st.number_input("Radius (fraction of weight norms)", 0.0001, 1.0, 0.005, format="%.4f")
    samples = st.number_input("Samples per loss", 1, 256, 32)
    directions = st.selectbox("Directions", ["gradient", "random"])

argv = ["landscape", *ui.pair_args(), "--grid", str(grid), "--radius", str(radius), "--samples", str(samples), "--directions", directions]


def partial(rows: list) -> None:
    """Rows of each surface appear as they finish."""
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
        col.metric(f"Structural difference, {name}", f"{value:.2f}%", help=f"100 x (1 - Pearson r of the two surfaces' Laplacians); cosine of the two directions {result['cosine'][name]:.3f}")
    ui.figure(figures.landscape_surfaces(result), "loss-landscapes")
    ui.figure(figures.cross_section_figure(result), "landscape-cross-sections")
