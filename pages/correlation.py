"""Correlation: Pearson r of base vs fine-tuned per-example losses on harmful, task and general data."""

import streamlit as st

from core.geometry.correlation import CorrelationConfig
from core.geometry.registry import ANALYSES
from core.present import figures
from pages import ui

ui.page_header(
    "Loss correlation",
    "If fine-tuning barely moves the harmful losses (r near 1) while reshaping the task ones, "
    "the safety drift is not where the loss changed.",
)
_, opts = ui.options(CorrelationConfig, "correlation")
with st.sidebar:
    files = {
        name: st.text_input(f"{name.capitalize()} set file (.jsonl/.csv, optional)", key=f"corr-{name}")
        for name in ANALYSES["correlate"].set_files
    }

argv = ["correlate", *ui.pair_args(), *opts, *ui.scaleout()]
for name, path in files.items():
    if path:
        argv += [f"--{name}-file", path]
result = ui.analysis(argv, "loss correlation", remember="correlate")
if result:
    ui.preset_note(CorrelationConfig, "correlation", opts)
    ui.table(figures.correlation_table(result))
    ui.figure(figures.correlation_scatter(result), "loss-correlation-scatter")
    ui.figure(figures.mean_loss_bars(result), "mean-loss-bars")
