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
from core.base.options import argv_for, default_of, defaults, has_quick, preset_values, user_fields
from core.base.paths import inside_allowed_roots, shown_path
from core.base.scaleout import ScaleOut
from core.present import export
from core.present.figures import apply_theme
from core.present.text import readable
from core.service import jobs, warmup
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
PRESETS = {"quick": "Quick preview", "paper": "Paper-sized (defaults)", "custom": "Custom"}


def options(config: type | tuple[type, ...], key: str, skip: tuple[str, ...] = ()) -> tuple[dict[str, Any], list[str]]:
    """Sidebar widgets for the user fields of one or more config dataclasses, with their defaults
    and help (``core.base.options``), and the command-line tokens of the values that differ from
    the defaults. Where the configs declare quick-preview values, a "Settings" radio above the
    widgets sets them all to a preset; editing a widget makes the settings "Custom"."""
    configs = config if isinstance(config, tuple) else (config,)
    shown = [f for c in configs for f in user_fields(c) if f.name not in skip]
    radio = f"{key}-preset" if any(has_quick(c) for c in configs) else None
    values: dict[str, Any] = {}
    with st.sidebar:
        preset = _preset_radio(configs, key, shown, radio) if radio else "paper"
        start = _preset(configs, "paper" if preset == "custom" else preset)
        for f in shown:
            values[f.name] = _widget(f, f"{key}-{f.name}", start[f.name], radio)
    return values, [t for c in configs for t in argv_for(c, values)]


def scaleout() -> list[str]:
    """Sidebar fields for the Ray scale-out (``core.base.scaleout``): its command-line tokens,
    none at the defaults (in-process). The answer is the same either way, so it is cached once."""
    return options(ScaleOut, "scaleout")[1]


def _preset(configs: tuple[type, ...], preset: str) -> dict[str, Any]:
    return {name: v for c in configs for name, v in preset_values(c, preset).items()}


def _preset_radio(configs: tuple[type, ...], key: str, shown: list, radio: str) -> str:
    """The preset radio: Quick preview for a newcomer on the demo world (the warm-up computes
    exactly those answers), Paper-sized for one's own models; picking one sets every widget."""
    if radio not in st.session_state:
        st.session_state[radio] = "quick" if is_demo() else "paper"
    return st.radio(
        "Settings",
        list(PRESETS),
        format_func=PRESETS.get,
        key=radio,
        on_change=_apply_preset,
        args=(configs, key, shown, radio),
        help="Quick preview: smaller versions of each setting (minutes on 2 cores). Paper-sized: the defaults.",
    )


def _apply_preset(configs: tuple[type, ...], key: str, shown: list, radio: str) -> None:
    preset = st.session_state[radio]
    if preset != "custom":
        values = _preset(configs, preset)
        for f in shown:
            st.session_state[f"{key}-{f.name}"] = _widget_value(f, values[f.name])


def _mark_custom(radio: str) -> None:
    st.session_state[radio] = "custom"


def _widget_value(f, value: Any) -> Any:
    """``value`` as the field's widget holds it (lists as comma-separated text, None as empty text)."""
    default = default_of(f)
    if isinstance(default, tuple):
        return ",".join(map(str, value))
    if default is None or (isinstance(default, str) and not f.metadata.get("choices")):
        return "" if value is None else str(value)
    return value


def quick_note(config: type | tuple[type, ...], opts: list[str]) -> str | None:
    """When ``opts`` are the quick preset's tokens, the line "Quick preview (about N min on 2 cores):
    what is smaller", N the configs' measured ``quick_minutes``; None otherwise."""
    configs = config if isinstance(config, tuple) else (config,)
    quick = _preset(configs, "quick")
    if opts != [t for c in configs for t in argv_for(c, quick)]:
        return None
    smaller = "; ".join(
        f"{_short_label(f)} {quick[f.name]} instead of {default_of(f)}"
        for c in configs
        for f in user_fields(c)
        if quick[f.name] != default_of(f)
    )
    minutes = sum(getattr(c, "quick_minutes", 0) for c in configs)
    return f"Quick preview (about {minutes:g} min on 2 cores): {smaller}."


def _short_label(f) -> str:
    """The widget's label without its parenthesised hints, first letter lower-case ("Lanczos" stays)."""
    label = re.sub(r"\s*\(.*?\)", "", f.metadata["label"] or f.name.replace("_", " "))
    return label if label.startswith("Lanczos") else label[:1].lower() + label[1:]


def preset_note(config: type | tuple[type, ...], key: str, opts: list[str]) -> None:
    """Above a quick preset's answer: what is smaller than paper-sized, and a one-click switch."""
    if note := quick_note(config, opts):
        configs = config if isinstance(config, tuple) else (config,)
        shown = [f for c in configs for f in user_fields(c)]
        text, switch = st.columns([5, 1], vertical_alignment="center")
        text.info(note, icon=":material/speed:")
        switch.button("Paper-sized settings", key=f"{key}-to-paper", on_click=_to_paper, args=(configs, key, shown))


def _to_paper(configs: tuple[type, ...], key: str, shown: list) -> None:
    st.session_state[f"{key}-preset"] = "paper"
    _apply_preset(configs, key, shown, f"{key}-preset")


def _widget(f, key: str, start: Any, radio: str | None = None) -> Any:
    default, meta = default_of(f), f.metadata
    label, tip = meta["label"] or f.name.replace("_", " ").capitalize(), meta["help"]
    custom = {"on_change": _mark_custom, "args": (radio,)} if radio else {}
    if isinstance(default, bool):
        return st.checkbox(label, start, help=tip, key=key, **custom)
    if meta.get("choices"):
        choices = list(meta["choices"])
        return st.selectbox(label, choices, index=choices.index(start), help=tip, key=key, **custom)
    if isinstance(default, int):
        return int(st.number_input(label, meta["low"], meta["high"], int(start), step=1, help=tip, key=key, **custom))
    if isinstance(default, float):
        value = float(start)
        return float(st.number_input(label, meta["low"], meta["high"], value, format="%g", help=tip, key=key, **custom))
    if isinstance(default, tuple):
        text = st.text_input(label, _widget_value(f, start), help=tip, key=key, **custom)
        kind = type(default[0]) if default else str
        try:
            return tuple(kind(x.strip()) for x in text.split(",") if x.strip())
        except ValueError:
            st.error(f"{label}: '{text}' is not a comma-separated list of {kind.__name__} values.")
            return default
    return st.text_input(label, _widget_value(f, start), help=tip, key=key, **custom) or default


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
    if state.status == "none" and (place := warmup_place(argv)):
        _warming(argv, place)
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


def warmup_place(argv: list[str]) -> tuple[int, int] | None:
    """(k, n) when the active warm-up (``core.service.warmup``) is to compute ``argv`` as its k-th
    of n analyses, read from the plan its job reported; None otherwise."""
    state = jobs.status(warmup.ARGV)
    if not state.active:
        return None
    plan = next((p["plan"] for p in state.partials if isinstance(p, dict) and "plan" in p), [])
    return (plan.index(list(argv)) + 1, len(plan)) if list(argv) in plan else None


def _warming(argv: list[str], place: tuple[int, int]) -> None:
    """While the warm-up computes this page's quick answer: say so, follow it, draw the answer when it lands."""

    @st.fragment(run_every=POLL_S)
    def waiting() -> None:
        state = jobs.status(warmup.ARGV)
        if not state.active or jobs.cached_answer(argv) is not None:
            st.rerun()
        st.info(f"Quick preview being computed by the warm-up ({place[0]} of {place[1]}).", icon=":material/schedule:")
        st.progress(
            min(max(state.fraction, 0.0), 1.0),
            text=f"Warm-up: {state.message or state.status} · {state.fraction * 100:.0f}%",
        )

    waiting()


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
