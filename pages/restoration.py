"""Restoration: launch a method, watch its metrics live, compare runs, and see the optimizer trajectories."""

from pathlib import Path

import streamlit as st

import core.restoration.methods  # noqa: F401  (importing it registers every method)
from core.base.paths import is_adapter_dir, shown_path
from core.present import figures
from core.restoration.data import DataConfig
from core.restoration.methods.curvature import iteration_table, pair_table
from core.restoration.registry import METHODS, param_tokens, preset_params, settable
from core.restoration.store import list_runs
from core.world.eval_options import EvalOptions
from pages import ui

ui.page_header(
    "Restoration",
    "Take the drifted fine-tune back to the base model's safety while keeping the task: "
    "curvature-aware influence updates (paper 1), direction-based weight restoration (paper 2) and baselines.",
)
_, eval_opts = ui.options(EvalOptions, "evaluation")  # judge, generation length, capability items, set sizes
_, data_opts = ui.options(DataConfig, "restoration data")  # set sizes, answer length, general answers
PAPER_METHODS = ["curvature", "direction"]  # listed first; LoRA-only methods need an adapter
methods = {
    name: {"summary": m.summary, "needs_adapter": m.needs_adapter, "params": settable(m.config())}
    for name, m in METHODS.items()
}


def _param_widget(method: str, preset: str, name: str, default):
    key = f"param-{method}-{preset}-{name}"  # a preset's own widgets: switching starts from its values
    if isinstance(default, bool):
        return st.checkbox(name, default, key=key)
    if isinstance(default, int):
        return st.number_input(name, value=default, step=1, key=key)
    if isinstance(default, float):
        return st.number_input(name, value=default, format="%g", key=key)
    if isinstance(default, tuple):
        text = st.text_input(name, ",".join(str(x) for x in default), key=key)
        return tuple(type(default[0])(x) for x in text.split(",") if x.strip()) if default else text
    return st.text_input(name, str(default), key=key)


def _preset(method: str) -> str:
    """Quick preview or paper-sized, for a method whose config declares quick values (the curvature
    methods); quick on the demo world, where the warm-up computes the curvature method's quick run."""
    if preset_params(METHODS[method], "quick") == methods[method]["params"]:
        return "paper"
    return st.radio(
        "Settings",
        ["quick", "paper"],
        index=0 if ui.is_demo() else 1,
        format_func=ui.PRESETS.get,
        horizontal=True,
        key=f"restore-preset-{method}",
    )


def _params(method: str, preset: str) -> list[str]:
    """--param KEY=VALUE for every value that differs from the method's defaults (so equal runs share one job)."""
    start, values = preset_params(METHODS[method], preset), {}
    with st.expander("Parameters", expanded=False):
        cols = st.columns(3)
        for i, (name, value) in enumerate(start.items()):
            with cols[i % 3]:
                values[name] = _param_widget(method, preset, name, value)
    return param_tokens(METHODS[method], values)


def _quick_note(method: str, params: list[str]) -> None:
    """Above a quick run's result: what is smaller than paper-sized."""
    m = METHODS[method]
    quick, paper = preset_params(m, "quick"), methods[method]["params"]
    if quick != paper and params == param_tokens(m, quick):
        smaller = "; ".join(f"{n} {quick[n]} instead of {paper[n]}" for n in quick if quick[n] != paper[n])
        minutes = getattr(m.config, "quick_minutes", 0)
        text, switch = st.columns([5, 1], vertical_alignment="center")
        text.info(f"Quick preview (about {minutes:g} min on 2 cores): {smaller}.", icon=":material/speed:")
        switch.button("Paper-sized settings", key=f"restore-{method}-to-paper", on_click=_to_paper, args=(method,))


def _to_paper(method: str) -> None:
    st.session_state[f"restore-preset-{method}"] = "paper"


def live_steps(events: list) -> None:
    steps = [e for e in events if isinstance(e, dict) and "step" in e]
    if steps:
        last = steps[-1]
        c1, c2, c3 = st.columns(3)
        c1.metric(
            "Harmful rate (monitor)",
            f"{last['harmful_rate']:.0f}%",
            delta=f"{last['harmful_rate'] - steps[0]['harmful_rate']:+.0f}",
            delta_color="inverse",
        )
        c2.metric(
            "Task exact-match (monitor)",
            f"{last['task_exact_match']:.0f}%",
            delta=f"{last['task_exact_match'] - steps[0]['task_exact_match']:+.0f}",
        )
        c3.metric("Steps", len(steps))
        ui.chart(figures.restoration_live({"steps": steps}), "restoration-live")


def curvature_pairs(notes: dict) -> None:
    """The curvature method's L-BFGS pairs (B.1) and each iteration's step (B.2), when the run has them."""
    if pair_table(notes):
        st.caption(
            "L-BFGS pairs (B.1): every attempted pair's s·y, norms and the filter that fired; per iteration "
            "the L2 shift λ, the damping μ, cos(direction, gradient) (1 means plain gradient ascent) and "
            "the step chosen on the validation split (B.2)."
        )
        ui.table(iteration_table(notes))
        ui.table(pair_table(notes))


def run_tab() -> None:
    """Pick a method and its parameters, launch it, watch it, see its before/after."""
    finetuned = ui.pair()["finetuned"]
    full_checkpoint = not ui.is_demo() and Path(finetuned).is_dir() and not is_adapter_dir(finetuned)
    names = sorted(
        (m for m in methods if not (methods[m]["needs_adapter"] and full_checkpoint)),
        key=lambda m: (m not in PAPER_METHODS, PAPER_METHODS.index(m) if m in PAPER_METHODS else 0),
    )
    method = st.selectbox("Method", names, format_func=lambda m: f"{m}: {methods[m]['summary']}")
    params = _params(method, _preset(method))
    argv = ["restore", "--method", method, *ui.pair_args(), *params, *eval_opts, *data_opts]
    if st.checkbox("Also before/after VISAGE (a basin run per model, minutes)", key="visage"):
        argv.append("--visage")
    record = ui.analysis(argv, f"{method} restoration", live_steps, remember="restoration")
    if record:
        _quick_note(method, params)
        st.success(
            f"Run {record['id']}: {record['status']} in {record['wall_s']:.0f} s · "
            f"restored weights in {shown_path(record['restored'])}"
        )
        ui.table(figures.before_after_table(record))
        curvature_pairs(record.get("notes") or {})
        if method == "safelora":
            ui.figure(figures.safelora_similarity(record.get("notes")), "safelora-similarity", key=f"sl-{record['id']}")
        ui.figure(figures.restoration_live(record), f"restoration-{method}", key=f"restoration-{record['id']}")


def runs_tab() -> None:
    """Every stored run on this machine."""
    runs = list_runs()
    if not runs:
        st.info("No restoration runs yet.")
    ui.table(
        [
            {
                "run": r.get("id"),
                "method": r.get("method"),
                "status": r.get("status"),
                "steps": len(r.get("steps", [])),
                "harmful after %": (r.get("after") or {}).get("harmful_rate"),
                "task EM after %": (r.get("after") or {}).get("task_exact_match"),
                "wall s": round(r.get("wall_s") or 0),
                "fine-tune": shown_path(r.get("finetuned")),
            }
            for r in runs
        ]
    )


def compare_tab() -> None:
    """Every method with its defaults on this pair: one table."""
    st.write("Every method with its defaults on the same pair, seed and data (runs are shared with the tab above).")
    result = ui.analysis(
        ["compare", *ui.pair_args(), *eval_opts, *data_opts, *ui.scaleout()],
        "comparison of all methods",
        remember="comparison",
    )
    if result:
        ui.table(result["table"])
        if result.get("skipped"):
            st.caption(f"Skipped (need a LoRA adapter): {', '.join(result['skipped'])}")
        ui.figure(figures.comparison_bars(result), "restoration-comparison")


def trajectories_tab() -> None:
    """PCA view of curvature-aware vs first-order paths."""
    st.write(
        "Curvature-aware vs first-order paths in the PCA plane of their snapshots, "
        "over the objective J = L_forget − L_retain (paper 1, C.2)."
    )
    result = ui.analysis(["trajectory", *ui.pair_args()], "trajectory comparison", remember="trajectory")
    if result:
        ui.figure(figures.trajectory_contour(result), "optimizer-trajectories")
        if note := (result.get("restoration runs") or {}).get("note"):
            st.caption(f"The plane of the actual restoration runs is drawn once they are stored: {note}.")


SECTIONS = {"Run a method": run_tab, "All runs": runs_tab, "Comparison": compare_tab, "Trajectories": trajectories_tab}
for tab, draw in zip(st.tabs(list(SECTIONS), on_change="rerun", key="restoration-tab"), SECTIONS.values()):
    if tab.open:  # only the open tab runs and sends its figures
        with tab:
            draw()
