"""What every page shares: the chosen model pair, background-job panels, figures with export
buttons, presentation mode and error boxes. Nothing here computes: analyses run as background
jobs (``core.service.jobs``) of the same command lines the CLI takes, and pages only draw their answers.
"""

from __future__ import annotations

import os
import re
from typing import Any, Callable

import plotly.graph_objects as go
import streamlit as st

from core.base.errors import InputError
from core.base.options import argv_for, default_of, defaults, user_fields
from core.base.paths import inside_allowed_roots, shown_path
from core.base.scaleout import ScaleOut
from core.present import export
from core.present.figures import apply_theme
from core.present.text import readable
from core.service import jobs
from core.world.choice import WorldChoice

POLL_S = 2.0
MIME = {"png": "image/png", "svg": "image/svg+xml", "pdf": "application/pdf"}
DEFAULT_PAIR = {**defaults(WorldChoice), "base": "", "finetuned": ""}


# ---------------------------------------------------------------------------- the model pair
def pair() -> dict[str, Any]:
    """The pair this session analyses (the demo world unless Home chose another), kept in the URL.

    URL parameters are checked like any input: numbers within their bounds, model paths inside
    the allowed folders (``core.base.paths.allowed_roots``); a bad one is dropped with an error box."""
    if "pair" not in st.session_state:
        st.session_state["pair"], st.session_state["url_errors"] = _pair_from_url(st.query_params)
    return st.session_state["pair"]


def _pair_from_url(q) -> tuple[dict[str, Any], list[InputError]]:
    out, errors = dict(DEFAULT_PAIR), []
    for f in user_fields(WorldChoice):
        raw = q.get(f.name)
        if raw is None:
            continue
        try:
            value = int(raw)
            if not f.metadata["low"] <= value <= f.metadata["high"]:
                raise ValueError
            out[f.name] = value
        except ValueError:
            bounds = f"{f.metadata['low']}-{f.metadata['high']}"
            errors.append(InputError(f"The link's {f.name} is not a whole number in {bounds}.", "the default is used."))
    for name in ("base", "finetuned"):
        value = q.get(name, "")
        if value and (problem := path_problem(value, name)):
            errors.append(problem)
        else:
            out[name] = value
    return out, errors


def path_problem(value: str, what: str) -> InputError | None:
    """A local model path outside the allowed folders (Hub ids like ``org/name`` pass: they load
    only from the Hub cache). Nothing outside those folders is listed, read or stat'ed."""
    local = value.startswith(("/", ".", "~")) or value.endswith(".gguf") or os.sep + os.sep in value
    if local and not inside_allowed_roots(value):
        return InputError(
            f"The {what} path is outside the folders this dashboard may read.",
            "start it with SAFETY_ALLOWED_ROOTS=<folder> (or use the command line, which is not restricted).",
        )
    return None


def plain(text: str) -> str:
    """``text`` with Markdown's special characters escaped: text from a link is shown, never rendered."""
    return re.sub(r"([\\`*_{}\[\]()<>#+\-.!|~:])", r"\\\1", text)


def set_pair(**values: Any) -> None:
    st.session_state["pair"] = {**pair(), **values}
    for k, v in st.session_state["pair"].items():
        if v in ("", None) or DEFAULT_PAIR.get(k) == v:
            st.query_params.pop(k, None)
        else:
            st.query_params[k] = str(v)


def pair_args(models: bool = True) -> list[str]:
    """The command-line options naming this pair (and its data seed)."""
    p = pair()
    args = argv_for(WorldChoice, p)  # defaults stay implicit: the page's command is the one a researcher types
    if models and p["base"]:
        args += ["--base", p["base"]]
    if models and p["finetuned"]:
        args += ["--finetuned", p["finetuned"]]
    return args


def is_demo() -> bool:
    p = pair()
    return not p["base"] and not p["finetuned"]


def pair_caption() -> str:
    p = pair()
    if is_demo():
        return f"Demo world · seed {p['seed']} · {p['harmful_examples']} harmful examples injected"
    return f"{shown_path(p['base'])} → {shown_path(p['finetuned']) or '(no fine-tune)'} · data seed {p['seed']}"


# ---------------------------------------------------------------------------- options
def options(config: type, key: str, skip: tuple[str, ...] = ()) -> tuple[dict[str, Any], list[str]]:
    """Sidebar widgets for the user fields of a config dataclass, with its defaults and help
    (``core.base.options``), and the command-line tokens of the values that differ from them."""
    values: dict[str, Any] = {}
    with st.sidebar:
        for f in user_fields(config):
            if f.name not in skip:
                values[f.name] = _widget(f, f"{key}-{f.name}")
    return values, argv_for(config, values)


def scaleout() -> list[str]:
    """Sidebar fields for the Ray scale-out (``core.base.scaleout``): its command-line tokens,
    none at the defaults (in-process). The answer is the same either way, so it is cached once."""
    return options(ScaleOut, "scaleout")[1]


def _widget(f, key: str) -> Any:
    default, meta = default_of(f), f.metadata
    label, tip = meta["label"] or f.name.replace("_", " ").capitalize(), meta["help"]
    if isinstance(default, bool):
        return st.checkbox(label, default, help=tip, key=key)
    if meta.get("choices"):
        return st.selectbox(label, list(meta["choices"]), index=list(meta["choices"]).index(default), help=tip, key=key)
    if isinstance(default, int):
        return int(st.number_input(label, meta["low"], meta["high"], default, step=1, help=tip, key=key))
    if isinstance(default, float):
        return float(st.number_input(label, meta["low"], meta["high"], default, format="%g", help=tip, key=key))
    if isinstance(default, tuple):
        text = st.text_input(label, ",".join(map(str, default)), help=tip, key=key)
        kind = type(default[0]) if default else str
        try:
            return tuple(kind(x.strip()) for x in text.split(",") if x.strip())
        except ValueError:
            st.error(f"{label}: '{text}' is not a comma-separated list of {kind.__name__} values.")
            return default
    return st.text_input(label, "" if default is None else str(default), help=tip, key=key) or default


# ---------------------------------------------------------------------------- presentation
def presentation() -> bool:
    return bool(st.session_state.get("presentation", st.query_params.get("presentation") == "1"))


def _leave_pages_directory_mode() -> None:
    """Hand a page that Streamlit ran on its own back to app.py's ``st.navigation``.

    Streamlit treats a folder named ``pages/`` beside the main script as a v1 multipage app until
    some run calls ``st.navigation``: when a fresh server's first request is a page URL (a bookmark,
    or a tab reconnecting after a restart), that page runs without app.py (narrow layout, no
    presentation toggle, app/home/ui listed as pages). Clearing the flag and rerunning shows the
    same page (same URL path, same page hash) through app.py.
    """
    try:
        from streamlit.runtime.pages_manager import PagesManager
    except ImportError:
        return
    if getattr(PagesManager, "uses_pages_directory", False):
        PagesManager.uses_pages_directory = False
        st.rerun()


def page_header(title: str, what: str) -> None:
    _leave_pages_directory_mode()
    st.title(title)
    st.caption(f"{what}  \n{plain(pair_caption())}")
    for err in st.session_state.get("url_errors", []):
        error_box(err)
    if is_demo():
        _world_notice()


def _world_notice() -> None:
    """While the demo world is being built, every page says that its analyses wait for it."""
    state = jobs.status(["world", *pair_args(models=False)])
    if state.active:
        eta = f", about {state.eta_s / 60:.0f} min left" if state.eta_s else ""
        st.info(
            f"The demo world is being built ({state.fraction * 100:.0f}%{eta}); analyses of it start once it exists."
        )


# ---------------------------------------------------------------------------- jobs
def analysis(
    argv: list[str],
    label: str,
    render_partial: Callable[[list], None] | None = None,
    autostart: bool = False,
    remember: str | None = None,
) -> dict[str, Any] | None:
    """The answer of ``argv`` if it is there; otherwise a button to start it (or the live job).

    Identical requests share one background job, so a reload, a second tab or a second user
    sees the same job; while it runs, a fragment polls its state without re-running the page.
    ``remember`` files the command line under that name for the Report page.
    """
    if remember:
        st.session_state.setdefault("argv", {})[remember] = argv
    try:
        state = jobs.status(argv)
    except InputError as err:
        error_box(err)
        return None
    if state.status == "done":
        return state.result
    if state.active:
        _live(argv, label, render_partial)
        return None
    if state.status == "failed":
        st.error(f"{label} failed: {state.error}", icon=":material/error:")
    elif state.status == "cancelled":
        st.info(f"{label} was cancelled; nothing was written.")
    command = "python -m core " + " ".join(argv)
    if autostart and state.status == "none":
        _start(argv)
    if st.button(f"Run {label}", key=f"run-{jobs.job_id(argv)}", type="primary", help=command):
        _start(argv)
    st.caption(f"Same as `{command}`")
    return None


def _start(argv: list[str]) -> None:
    try:
        jobs.submit(argv)
    except InputError as err:
        error_box(err)
        return
    st.session_state.setdefault("submitted", set()).add(jobs.job_id(argv))
    st.rerun()


def may_cancel(argv: list[str]) -> bool:
    """Only the browser session that started (or joined by clicking Run on) a job may cancel it,
    unless ``SAFETY_ANYONE_CANCELS=1`` (a dashboard of one person, who may reload the tab)."""
    if os.environ.get("SAFETY_ANYONE_CANCELS") == "1":
        return True
    return jobs.job_id(argv) in st.session_state.get("submitted", set())


def _live(argv: list[str], label: str, render_partial: Callable[[list], None] | None) -> None:
    @st.fragment(run_every=POLL_S)
    def live() -> None:
        state = jobs.status(argv)
        if not state.active:
            st.rerun()
        eta = f" · ETA {state.eta_s:.0f} s" if state.eta_s is not None else ""
        st.progress(
            min(max(state.fraction, 0.0), 1.0),
            text=f"{label}: {state.message or state.status} · {state.fraction * 100:.0f}%{eta}",
        )
        if state.threads:
            st.caption(threads_caption(state.threads))
        if not may_cancel(argv):
            st.caption("Started in another browser session: only that session can cancel it.")
        elif st.button("Cancel", key=f"cancel-{state.id}"):
            jobs.cancel(argv)
            st.toast("Cancelling at the next step…")
        if render_partial is not None and state.partials:
            render_partial(state.partials)

    live()


def threads_caption(threads: int) -> str:
    """How many torch threads the job computes with, and the settings that chose it."""
    settings = jobs.JobSettings.from_env()
    return (
        f"Computing with {threads} torch thread{'s' if threads > 1 else ''}: {os.cpu_count()} cores shared by "
        f"at most {settings.max_running} running job{'s' if settings.max_running > 1 else ''} "
        "(settings SAFETY_MAX_JOBS and SAFETY_JOB_THREADS; other jobs wait in line)."
    )


def error_box(err: Exception) -> None:
    st.error(str(err), icon=":material/error:")


# ---------------------------------------------------------------------------- figures
def figure(fig: go.Figure, name: str, key: str | None = None) -> None:
    """Show a themed figure with PNG (1920x1080 at scale 2), SVG and PDF downloads (rendered on click)."""
    key = key or name
    fig = chart(fig, f"chart-{key}")
    cols = st.columns([1, 1, 1, 6])
    for col, fmt in zip(cols, ("png", "svg", "pdf")):
        with col:
            st.download_button(
                fmt.upper(),
                data=_exporter(fig, fmt),
                file_name=f"{name}.{fmt}",
                mime=MIME[fmt],
                key=f"dl-{key}-{fmt}",
                on_click="ignore",
            )


def chart(fig: go.Figure, key: str) -> go.Figure:
    """Draw a figure in the slide theme (Streamlit's own theme off, so the page matches the export)."""
    fig = apply_theme(fig, large=presentation())
    st.plotly_chart(fig, width="stretch", key=key, theme=None)
    return fig


def _exporter(fig: go.Figure, fmt: str) -> Callable[[], bytes]:
    return lambda: export.figure_bytes(fig, fmt)


def table(rows: list[dict]) -> None:
    """A small static table: lighter in a cold browser tab than the interactive data grid."""
    if rows:
        st.table(readable(rows), border="horizontal", hide_index=True)
