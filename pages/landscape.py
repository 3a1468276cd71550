"""Landscape: gradient-informed 3D loss surfaces, the Laplacian structural difference with its
noise floor, cross-sections."""

import streamlit as st

from core.geometry.landscape import LandscapeConfig
from core.present import figures
from pages import ui

ui.page_header(
    "Loss landscape",
    "Surfaces of the loss around each model along two gradient-informed directions (paper 1, eq. 6-7); "
    "the structural difference compares their interior Laplacians (eq. 8), next to its noise floor.",
)
values, opts = ui.options(LandscapeConfig, "landscape")
argv = ["landscape", *ui.pair_args(), *opts, *ui.scaleout()]


def partial(rows: list) -> None:
    """Rows of each surface's first sample half (or of the whole batch) appear as they finish."""
    rows = [r for r in rows if r.get("part", "all") in ("a", "all")]
    if not rows:
        return
    grid = len(rows[-1]["values"])
    surfaces: dict = {}
    for row in rows:
        set_name, model = row["label"].split("/")
        z = surfaces.setdefault(set_name, {}).setdefault(model, [[None] * grid for _ in range(grid)])
        z[row["row"]] = row["values"]
    coords = rows[-1].get("coords") or list(range(grid))
    ui.chart(figures.landscape_surfaces({"coords": coords, "surfaces": surfaces}), "landscape-partial")


def _metric(result: dict, name: str) -> tuple[str, str]:
    """``difference (floor)`` and a tooltip with the interval, the repeats, the cosine and the radius."""
    value, floor = result["structural_difference"][name], (result.get("structural_difference_floor") or {}).get(name)
    low, high = (result.get("structural_difference_interval") or {}).get(name, (float("nan"),) * 2)
    text = f"{value:.1f}%" + (f" (floor {floor:.1f}%)" if floor is not None else "")
    repeats = (result.get("structural_difference_repeats") or {}).get(name) or {}
    tip = (
        "100 x (1 - Pearson r of the two surfaces' interior Laplacians); "
        f"bootstrap 95% interval over grid points [{low:.1f}, {high:.1f}]%. "
        "Floor: the difference between two landscapes of one model on the two sample halves (resampling alone). "
        + "".join(f"{k.replace('_', ' ')} {v:.1f}%; " for k, v in repeats.items())
        + f"cosine of the two directions {result['cosine'][name]:.3f}; radius {result.get('radius', float('nan')):.4g}."
    )
    return text, tip


result = ui.analysis(argv, "loss landscape", partial, remember="landscape")
if result:
    ui.preset_note(LandscapeConfig, "landscape", opts)
    diff = result["structural_difference"]
    cols = st.columns(len(diff))
    for col, name in zip(cols, diff):
        text, tip = _metric(result, name)
        col.metric(f"Structural difference (floor), {name}", text, help=tip)
    fit = result.get("radius_fit") or {}
    if fit.get("fitted"):
        st.caption(
            f"Radius {result['radius']:.4g} ({result.get('coefficient_units', '')}): the base model's {fit.get('set')} "
            f"loss rises by {100 * fit.get('rise', 0):.0f}% at that distance along d1"
            + (" (capped)" if fit.get("capped") else "")
            + "."
        )
    ui.figure(figures.landscape_surfaces(result), "loss-landscapes")
    ui.figure(figures.cross_section_figure(result), "landscape-cross-sections")
