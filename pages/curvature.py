"""Curvature: the alignment-instability conditions on the aligned base (the paper's statement) and
on the fine-tune, the safety-Hessian spectra, and the alignment loss under gradient descent from
the aligned base with the quartic-law verdict.
"""

import streamlit as st

from core.geometry.curvature import CurvatureConfig, DriftConfig
from core.present import figures
from pages import ui

ui.page_header(
    "Curvature",
    "Top eigenvalues of the safety-loss Hessian (Lanczos on Hessian-vector products) on the aligned base "
    "and the fine-tune, how much of the task's second-order acceleration falls in that eigenspace, "
    "and how the alignment loss grows under plain gradient descent from the aligned base.",
)
_, opts = ui.options((CurvatureConfig, DriftConfig), "curvature")
argv = ["curvature", *ui.pair_args(), *opts]


def partial(events: list) -> None:
    drift = [e for e in events if "alignment_loss" in e]
    if drift:
        ui.chart(figures.drift_figure(drift[-1]), "drift-partial")


def verdict(name: str, cond: dict) -> None:
    """One line per model: whether the three conditions hold, each with value vs threshold."""
    holds = bool(cond.get("all_hold"))
    parts = "; ".join(
        f"{label} {'✓' if cond[key]['holds'] else '✗'} ({cond[key]['value']:.3g} vs {cond[key]['threshold']:.3g})"
        for key, label in figures.CONDITION_LABELS.items()
        if isinstance(cond.get(key), dict)
    )
    text = "all three alignment-instability conditions hold" if holds else "not all three conditions hold"
    (st.warning if holds else st.info)(f"{name}: {text}: {parts}")


result = ui.analysis(argv, "curvature analysis", partial, remember="curvature")
if result:
    ui.preset_note((CurvatureConfig, DriftConfig), "curvature", opts)
    aligned, tuned = result.get("aligned", result), result.get("finetuned")
    verdict("Aligned base", aligned["conditions"])
    if tuned:
        verdict("Fine-tune", tuned["conditions"])
    c1, c2, c3, c4 = st.columns(4)
    c1.metric(
        "λ₁ (safety)",
        f"{aligned['safety_eigenvalues'][0]:.4g}",
        help="aligned base" + (f"; fine-tune {tuned['safety_eigenvalues'][0]:.4g}" if tuned else ""),
    )
    c2.metric(
        "Coupling share",
        f"{aligned['coupling']['share']:.3g}",
        help=f"share of H_F g in the top-k safety eigenspace of the aligned base "
        f"({aligned['coupling']['angle_deg']:.1f}° from it)",
    )
    c3.metric("Parameters", f"{aligned['n_params']:,}")
    drift = result.get("drift") or {}
    c4.metric("Quartic law", (drift.get("verdict") or {}).get("label", "not run"))
    ui.table(figures.conditions_table(result))
    ui.figure(figures.hessian_spectrum(result), "hessian-spectrum")
    if any(isinstance((b or {}).get("density"), dict) for b in (aligned, tuned)):
        ui.figure(figures.spectral_density(result), "spectral-density")
    graph = (aligned.get("hvp_graph") or {}).get("safety")
    if graph:
        lanczos = aligned.get("lanczos") or {}
        st.caption(
            f"Hessian-vector products: gradient graph {graph['mode']} "
            f"(kept {graph['retained_bytes'] / 2**20:.0f} MiB of {graph['budget_bytes'] / 2**30:.3g} GiB allowed); "
            f"Lanczos took {lanczos.get('steps', '?')} of at most {lanczos.get('max_steps', '?')} steps"
            f"{' and met its tolerance' if lanczos.get('converged') else ''}."
        )
    if drift:
        ui.figure(figures.drift_figure(drift), "drift-monitor")
        station, predicted = drift.get("stationarity") or {}, drift.get("predicted") or {}
        if station:
            st.caption(
                f"At step 0 the probe loss's gradient norm is {station['safety_gradient_norm']:.3g} against the "
                f"task gradient's {station['task_gradient_norm']:.3g} (cosine {station['cosine']:.2g}); "
                f"the quartic law assumes the aligned model is stationary for the probe."
            )
        if predicted.get("dominant"):
            st.caption(
                f"Taylor terms of the aligned model: {predicted['dominant']} dominates at the last step; the quartic "
                f"overtakes the quadratic at step {predicted.get('quartic_overtakes_at_step', float('nan')):.3g}."
            )
        st.caption(f"Verdict rule: {(drift.get('verdict') or {}).get('rule', '')}.")
