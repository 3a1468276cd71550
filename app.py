"""Streamlit entry point: navigation, presentation mode, and the pages in ``pages/``.

Run with ``make run`` (or ``streamlit run app.py``). Pages are thin: widgets, a background job
per analysis (``core.service.jobs``), figures from ``core.present.figures``.
"""

import streamlit as st

PAGES = [
    st.Page("pages/home.py", title="Models and data", icon=":material/home:", default=True),
    st.Page("pages/correlation.py", title="Correlation", icon=":material/scatter_plot:"),
    st.Page("pages/landscape.py", title="Landscape", icon=":material/landscape:"),
    st.Page("pages/curvature.py", title="Curvature", icon=":material/cyclone:"),
    st.Page("pages/basin.py", title="Safety basin", icon=":material/radar:"),
    st.Page("pages/restoration.py", title="Restoration", icon=":material/build:"),
    st.Page("pages/report.py", title="Report", icon=":material/description:"),
]

presenting = st.query_params.get("presentation") == "1"
st.set_page_config(
    page_title="Safety drift lab", layout="wide", initial_sidebar_state="collapsed" if presenting else "auto"
)
with st.sidebar:
    st.toggle(
        "Presentation mode",
        value=presenting,
        key="presentation",
        help="Larger fonts and figures for a projector; cached results show at once.",
    )
if st.session_state.get("presentation"):
    st.markdown(
        "<style>html, body, [class*='css'] {font-size: 22px;} h1 {font-size: 3rem !important;}</style>",
        unsafe_allow_html=True,
    )
st.navigation(PAGES).run()
