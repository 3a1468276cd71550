"""Streamlit entry point. A placeholder home page until the dashboard issue: the demo world's
status and each model's headline numbers, read from ``core``."""
import streamlit as st

from core.world import WorldConfig, check_targets, load_world

st.set_page_config(page_title="Safety drift lab", layout="wide")
st.title("Safety drift lab")
st.write("Why fine-tuning erodes an aligned model's safety, and how to restore it.")

world = load_world(WorldConfig())
if world is None:
    st.warning("The demo world is not built yet. Run `python -m core world` (or `make run`).")
else:
    st.subheader("Demo world")
    st.caption(f"{world.root}  ·  seed {world.info['seed']}  ·  {world.info['injected_harmful_examples']} harmful examples injected")
    cols = st.columns(2)
    for col, name in zip(cols, ("base", "finetuned")):
        m = world.info["metrics"][name]
        with col:
            st.markdown(f"**{name}**")
            st.metric("Harmful rate", f"{m['harmful_rate']:.1f}%")
            st.metric("Prefill ASR", f"{m['prefill_asr']:.1f}%")
            st.metric("Task exact-match", f"{m['task_exact_match']:.1f}%")
            st.metric("Over-refusal", f"{m['over_refusal']:.1f}%")
    st.json(check_targets(world.info["metrics"]))
