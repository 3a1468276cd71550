"""Curvature: the safety loss's Hessian spectrum, curvature coupling, the alignment-instability conditions,
the drift monitor.
"""

import streamlit as st

from core.geometry.curvature import CurvatureConfig, DriftConfig
from core.present import figures
from pages import ui

ui.page_header(
    "Curvature",
    "Top eigenvalues of the safety-loss Hessian (Lanczos on Hessian-vector products), "
    "the task gradient's share in that eigenspace, "
    "and how the alignment loss drifts under benign fine-tuning.",
)
_, curvature_opts = ui.options(CurvatureConfig, "curvature")
_, drift_opts = ui.options(DriftConfig, "drift")
argv = ["curvature", *ui.pair_args(), *curvature_opts, *drift_opts]


def partial(events: list) -> None:
    drift = [e for e in events if "alignment_loss" in e]
    if drift:
        ui.chart(figures.drift_figure(drift[-1]), "drift-partial")


result = ui.analysis(argv, "curvature analysis", partial, remember="curvature")
if result:
    cond = result["conditions"]
    verdict = (
        "All three alignment-instability conditions hold"
        if cond["all_hold"]
        else "Not all alignment-instability conditions hold"
    )
    (st.warning if cond["all_hold"] else st.success)(
        f"{verdict}: "
        + "; ".join(
            f"{name.replace('_', ' ')} {'✓' if c['holds'] else '✗'} ({c['value']:.3g} vs {c['threshold']:.3g})"
            for name, c in cond.items()
            if name != "all_hold"
        )
    )
    c1, c2, c3 = st.columns(3)
    c1.metric("λ₁ (safety)", f"{result['safety_eigenvalues'][0]:.4g}")
    c2.metric(
        "Coupling share",
        f"{result['coupling']['share']:.3g}",
        help=f"{result['coupling']['angle_deg']:.1f}° from the top-k eigenspace",
    )
    c3.metric("Parameters", f"{result['n_params']:,}")
    ui.table(figures.conditions_table(result))
    ui.figure(figures.hessian_spectrum(result), "hessian-spectrum")
    if result.get("drift"):
        ui.figure(figures.drift_figure(result["drift"]), "drift-monitor")
