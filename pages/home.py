"""Home: choose the model pair and its data seed; the demo world's build status; a summary card per model."""

from pathlib import Path

import streamlit as st

from core.base.errors import InputError
from core.base.options import help_of
from core.base.paths import shown_path
from core.present import figures
from core.service import warmup
from core.world.choice import WorldChoice
from core.world.data import BENIGN_SPLIT_SIZES, BORDERLINE_SPLIT_SIZES, HARMFUL_SPLIT_SIZES
from core.world.eval_options import EvalOptions
from pages import ui

CARD = (
    ("Harmful rate", "harmful_rate"),
    ("Prefill ASR", "prefill_asr"),
    ("Task exact-match", "task_exact_match"),
    ("Over-refusal", "over_refusal"),
)

ui.page_header("Safety drift lab", "Why fine-tuning erodes an aligned model's safety, and how to restore it.")


def choose_pair() -> None:
    p = ui.pair()
    with st.expander("Model pair and data", expanded=not ui.is_demo()):
        kind = st.radio(
            "Models",
            ["Demo world (SmolLM2-135M, built on this machine)", "My models"],
            index=0 if ui.is_demo() else 1,
            horizontal=True,
        )
        with st.form("pair-form"):
            c1, c2 = st.columns(2)
            seed = c1.number_input("Data seed (splits)", 0, 10_000, p["seed"], help=help_of(WorldChoice, "seed"))
            injected = c2.number_input(
                "Harmful examples injected (demo fine-tune)",
                0,
                400,
                p["harmful_examples"],
                disabled=not kind.startswith("Demo"),
                help=help_of(WorldChoice, "harmful_examples"),
            )
            base = st.text_input(
                "Base (aligned) model: Hugging Face id, directory or .gguf", p["base"], disabled=kind.startswith("Demo")
            )
            finetuned = st.text_input(
                "Fine-tuned: PEFT adapter directory on the base, or a full checkpoint directory",
                p["finetuned"],
                disabled=kind.startswith("Demo"),
            )
            if st.form_submit_button("Use this pair", type="primary"):
                if kind.startswith("Demo"):
                    ui.set_pair(seed=int(seed), harmful_examples=int(injected), base="", finetuned="")
                elif problem := _pair_problem(base, finetuned):
                    ui.error_box(problem)
                    return
                else:
                    ui.set_pair(seed=int(seed), base=base, finetuned=finetuned)
                st.rerun()
        st.caption(
            "Splits (held-out evaluation, restoration and analysis sets) are drawn with the data seed: "
            f"harmful {HARMFUL_SPLIT_SIZES}, benign {BENIGN_SPLIT_SIZES}, borderline {BORDERLINE_SPLIT_SIZES}. "
            "Each analysis page can replace its sets with a .jsonl/.csv file."
        )


def _pair_problem(base: str, finetuned: str) -> InputError | None:
    """A missing base or a local path that does not exist, caught before any job starts."""
    if not base:
        return InputError("No base model given.", "enter a Hugging Face id or a local directory.")
    for value, what in ((base, "base"), (finetuned, "fine-tuned")):
        if value and (problem := ui.path_problem(value, what)):
            return problem
    if _looks_local(finetuned) and not Path(finetuned).expanduser().exists():
        return InputError(
            f"Fine-tuned path '{finetuned}' does not exist.", "enter an existing adapter or checkpoint directory."
        )
    if _looks_local(base) and not Path(base).expanduser().exists():
        return InputError(
            f"Base path '{base}' does not exist.", "enter an existing directory, .gguf file or a Hugging Face id."
        )
    return None


def _looks_local(path: str) -> bool:
    return bool(path) and (path.startswith(("/", ".", "~")) or path.endswith(".gguf") or Path(path).exists())


def cards(metrics: dict) -> None:
    cols = st.columns(len(metrics))
    for col, (name, m) in zip(cols, metrics.items()):
        with col, st.container(border=True):
            st.subheader({"base": "Base (aligned)", "finetuned": "Fine-tuned"}.get(name, name))
            for label, key in CARD:
                st.metric(label, f"{m[key]:.1f}%")
                if ci := m.get("intervals", {}).get(key):
                    st.caption(f"95% CI {ci['ci_low']:.1f}–{ci['ci_high']:.1f} · n = {ci['n']}")
            if "general_capability" in m:  # evaluate's answer: mean lm-eval acc over the six tasks
                st.metric("General capability (mean acc)", f"{m['general_capability']:.1f}%")
                ci = m["intervals"]["general_capability"]
                st.caption(f"95% CI {ci['ci_low']:.1f}–{ci['ci_high']:.1f} · n = {ci['n']} items")


choose_pair()
if ui.is_demo():
    world_args = ui.pair_args(models=False)
    # Only the default world builds by itself (make run's first look); a link never starts other work.
    world = ui.analysis(["world", *world_args], "demo world build", autostart=not world_args)
    if world:
        cards(world["metrics"])
        ui.figure(figures.pair_bars(world["metrics"]), "base-vs-finetuned")
        met = world["targets"]
        st.caption(
            f"World targets: {sum(met.values())}/{len(met)} met · "
            f"built in {world['build_seconds']:.0f} s · {shown_path(world['world'])}"
        )
    if world and not world_args:  # the same rule: the default world's quick previews, never a link's
        previews = ui.analysis(warmup.ARGV, "quick previews of the analyses", autostart=True)
        if previews:
            ready = [name for name, a in previews["analyses"].items() if a["status"] != "failed"]
            st.caption(f"Quick previews ready: {', '.join(ready)} (each analysis page opens on its figure).")
            for name, a in previews["analyses"].items():
                if a["status"] == "failed":
                    st.warning(f"Quick preview of {name} failed: {a['error']}", icon=":material/error:")
else:
    _, eval_opts = ui.options(EvalOptions, "evaluation")  # judge, generation length, capability items, set sizes
    result = ui.analysis(["evaluate", *ui.pair_args(), *eval_opts], "evaluation of both models")
    if result:
        cards(pair := {k: v for k, v in result.items() if k in ("base", "finetuned")})
        ui.figure(figures.pair_bars(pair), "base-vs-finetuned")
