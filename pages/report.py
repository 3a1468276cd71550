"""Report: every finished analysis and run of this pair in one place; export as one HTML file plus JSON."""

from datetime import date

import streamlit as st

import core.geometry.analyses  # noqa: F401  (importing it registers every analysis)
from core.base.options import argv_for, preset_values
from core.geometry.claims import RULES, claims_table
from core.geometry.registry import ANALYSES
from core.present import figures
from core.present.export import Section, report_html, report_json
from core.present.figures import FIGURES
from core.restoration.store import list_runs
from core.service import jobs, warmup
from pages import ui

RUN_COLUMNS = ("harmful_rate", "prefill_asr", "task_exact_match", "over_refusal", "visage")
ui.page_header(
    "Report",
    "Every finished analysis of this pair, with the settings last used on each page (otherwise what the page "
    "opens on: the quick preview on the demo world, the defaults on your own pair).",
)


def _argv(page: str, default: list[str]) -> list[str]:
    return st.session_state.get("argv", {}).get(page, default)


def _opening_argv(name: str) -> list[str]:
    """The command line analysis ``name``'s page builds in a fresh session (``ui.options``): the
    quick preset on the demo world (the warm-up's answer), the defaults on a researcher's pair."""
    preset = "quick" if ui.is_demo() else "paper"
    return [name, *ui.pair_args(), *(t for c in ANALYSES[name].configs for t in argv_for(c, preset_values(c, preset)))]


def _answer(argv: list[str]) -> dict | None:
    state = jobs.status(argv)
    return state.result if state.status == "done" else None


def sections() -> list[Section]:
    out = []
    if ui.is_demo() and (world := _answer(["world", *ui.pair_args(models=False)])):
        out.append(
            Section(
                "Models",
                ui.pair_caption(),
                tables={"summary": [{"model": k, **v} for k, v in world["metrics"].items()]},
                numbers={"metrics": world["metrics"]},
            )
        )
    answers = {}
    for name, analysis in ANALYSES.items():
        answers[name] = r = _answer(_argv(name, _opening_argv(name)))
        if r:
            f = FIGURES[name]
            out.append(Section(analysis.title, f.text, f.figures(r), f.tables(r), f.numbers(r)))
    if any(answers.values()):
        rows = claims_table(answers, ui.pair_args())
        out.append(
            Section(
                "The papers' claims on this pair",
                "Each claim, the number measured here with its interval or floor, and a verdict by a rule fixed in "
                "advance; 'not measured' until its page has run.",
                tables={"claims": [{k: r[k] for k in ("verdict", "claim", "paper", "measured")} for r in rows]},
                numbers={"claims": rows, "rules": RULES},
            )
        )
    restore_argv = _argv("restoration", warmup.quick_restore_argv() if ui.is_demo() else [])
    if restore_argv and (r := _answer(restore_argv)):
        out.append(
            Section(
                f"Restoration: {r['method']}",
                f"Run {r['id']} ({r['status']}).",
                [figures.restoration_live(r)],
                {"before/after": figures.before_after_table(r)},
                {"before": r["before"], "after": r["after"], "config": r["config"]},
            )
        )
    if r := _answer(_argv("comparison", ["compare", *ui.pair_args()])):
        out.append(
            Section(
                "Restoration methods compared",
                "Every method with its defaults, same pair, seed and data.",
                [figures.comparison_bars(r)],
                {"comparison": r["table"]},
                {"table": r["table"]},
            )
        )
    if r := _answer(_argv("trajectory", ["trajectory", *ui.pair_args()])):
        out.append(
            Section(
                "Optimizer trajectories",
                "PCA plane of curvature-aware vs first-order paths over J = L_forget - L_retain.",
                [figures.trajectory_contour(r)],
                numbers={
                    lr: {"explained_variance": v["explained_variance"], "final_forget_loss": v["final_forget_loss"]}
                    for lr, v in r.items()
                },
            )
        )
    runs = [
        {
            "run": r.get("id"),
            "method": r.get("method"),
            "status": r.get("status"),
            **{f"after {k}": v for k, v in (r.get("after") or {}).items() if k in RUN_COLUMNS},
        }
        for r in list_runs()
    ]
    if runs:
        out.append(Section("All restoration runs", "Every stored run on this machine.", tables={"runs": runs}))
    return out


parts = sections()
if not parts:
    st.info("Nothing finished yet for this pair: run an analysis on another page first.")
    st.stop()
st.write("Included: " + ", ".join(s.title for s in parts))
title = f"Safety drift report: {ui.pair_caption()}"
stem = f"safety-drift-report-{date.today().isoformat()}"
c1, c2 = st.columns(2)
c1.download_button(
    "Report (HTML, self-contained)",
    data=lambda: report_html(title, parts),
    file_name=f"{stem}.html",
    mime="text/html",
    on_click="ignore",
    type="primary",
)
c2.download_button(
    "Numbers (JSON)",
    data=lambda: report_json(parts),
    file_name=f"{stem}.json",
    mime="application/json",
    on_click="ignore",
)
preview = st.toggle(
    "Show the figures here",
    value=True,
    help="They are always in the HTML report; off: tables only (drawing every figure takes a few seconds).",
)
for s in parts:
    st.subheader(s.title)
    st.caption(s.text)
    for name, rows in s.tables.items():
        ui.table(rows)
    if preview:
        for i, fig in enumerate(s.figures):
            ui.figure(fig, f"{s.title.lower().replace(' ', '-').replace(':', '')}-{i}", key=f"report-{s.title}-{i}")
    elif s.figures:
        st.caption(f"{len(s.figures)} figure(s) in the report.")
