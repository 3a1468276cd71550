"""Correlation: Pearson r of base vs fine-tuned per-example losses on harmful, task and general data."""
import streamlit as st

from core.present import figures
from pages import ui

ui.page_header("Loss correlation", "If fine-tuning barely moves the harmful losses (r near 1) while reshaping the task ones, the safety drift is not where the loss changed.")
with st.sidebar:
    n = st.number_input("Examples per set", 3, 1000, 100)
    tokens = st.selectbox("Tokens", ["auto", "all"], help="auto: response tokens where a response exists, else the whole text")
    files = {name: st.text_input(f"{name.capitalize()} set file (.jsonl/.csv, optional)", key=f"corr-{name}") for name in ("harmful", "task", "general")}

argv = ["correlate", *ui.pair_args(), "--n", str(n), "--tokens", tokens]
for name, path in files.items():
    if path:
        argv += [f"--{name}-file", path]
result = ui.analysis(argv, "loss correlation", remember="correlation")
if result:
    ui.table(figures.correlation_table(result))
    ui.figure(figures.correlation_scatter(result), "loss-correlation-scatter")
    ui.figure(figures.mean_loss_bars(result), "mean-loss-bars")
