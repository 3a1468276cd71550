"""Every dashboard plot, built from the engine's plain-JSON results in one "slide" style.

The style is a registered Plotly template (``"slide"``): white background, 20 px text and
28 px titles, the colour-blind-safe Okabe-Ito palette and a light grid, so a screenshot can go
straight onto a slide. ``apply_theme(fig, large=True)`` scales the text for a projector.

Builders only rearrange numbers (no model, no heavy maths) and never raise on missing or
partial input: a result still being computed gives a figure that says "no data yet" or shows
the parts that have finished. Tables come back as ``list[dict]`` rows for ``st.dataframe``.
"""

from __future__ import annotations

import html
import itertools
import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import numpy as np
import plotly.graph_objects as go
import plotly.io as pio
from plotly.subplots import make_subplots

# Okabe & Ito (2008), ordered so the first colours contrast best on white.
OKABE_ITO = ["#0072B2", "#D55E00", "#009E73", "#E69F00", "#CC79A7", "#56B4E9", "#000000", "#F0E442"]
ROLE_COLOURS = {"base": "#0072B2", "finetuned": "#D55E00", "fine-tuned": "#D55E00"}
SET_COLOURS = {"harmful": "#D55E00", "task": "#0072B2", "general": "#009E73", "benign": "#009E73"}
SEQUENTIAL = "Viridis"
DASHES = ["solid", "dash", "dot", "dashdot", "longdash", "longdashdot"]

BASE_FONT, TITLE_FONT, SUBTITLE_FONT = 20, 28, 22
LARGE_SCALE = 1.4
NO_DATA = "no data yet"
TEMPLATE = "slide"

LOSS = "loss (nats)"
ALPHA = "α (fraction of weight norm)"
BETA = "β (fraction of weight norm)"
PERCENT_RANGE = [-2, 102]


def _axis_style() -> dict[str, Any]:
    return dict(
        showgrid=True,
        gridcolor="#E6E6E6",
        gridwidth=1,
        zeroline=False,
        showline=True,
        linecolor="#444444",
        ticks="outside",
        tickcolor="#444444",
        automargin=True,
        title=dict(standoff=12),
    )


def _scene_axis_style() -> dict[str, Any]:
    return dict(
        backgroundcolor="white",
        gridcolor="#DDDDDD",
        showbackground=True,
        zerolinecolor="#999999",
        nticks=5,
        tickfont=dict(size=15),
        title=dict(font=dict(size=18)),
    )


def slide_template() -> go.layout.Template:
    """The slide style as a Plotly template (registered as ``"slide"`` on import)."""
    return go.layout.Template(
        layout=dict(
            font=dict(family="Helvetica, Arial, 'DejaVu Sans', sans-serif", size=BASE_FONT, color="#222222"),
            title=dict(font=dict(size=TITLE_FONT), x=0.01, xanchor="left", y=0.97, yanchor="top"),
            paper_bgcolor="white",
            plot_bgcolor="white",
            colorway=OKABE_ITO,
            xaxis=_axis_style(),
            yaxis=_axis_style(),
            scene=dict(xaxis=_scene_axis_style(), yaxis=_scene_axis_style(), zaxis=_scene_axis_style()),
            colorscale=dict(sequential=SEQUENTIAL),
            legend=dict(bgcolor="rgba(255,255,255,0.8)", bordercolor="#CCCCCC", borderwidth=1),
            hoverlabel=dict(font=dict(size=16)),
            margin=dict(l=90, r=40, t=110, b=80),
        )
    )


pio.templates[TEMPLATE] = slide_template()


def apply_theme(fig: go.Figure, large: bool = False) -> go.Figure:
    """Apply the slide style; ``large`` scales all text by 1.4 for a projector. Returns ``fig``."""
    scale = LARGE_SCALE if large else 1.0
    fig.update_layout(template=TEMPLATE, font_size=round(BASE_FONT * scale), title_font_size=round(TITLE_FONT * scale))
    fig.update_annotations(font_size=round(SUBTITLE_FONT * scale))
    return fig


def no_data(title: str, message: str = NO_DATA) -> go.Figure:
    """A themed, empty figure whose only content is ``message`` (used for missing input)."""
    fig = go.Figure()
    fig.add_annotation(text=message, x=0.5, y=0.5, xref="paper", yref="paper", showarrow=False)
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    return _finish(fig, title)


def _finish(fig: go.Figure, title: str, **layout: Any) -> go.Figure:
    fig.update_layout(title_text=title, **layout)
    return apply_theme(fig)


# ---------------------------------------------------------------------------- small helpers
def _label(name: str) -> str:
    return "fine-tuned" if name == "finetuned" else str(name).replace("_", " ")


def _ordered(names: Iterable[str], first: Iterable[str]) -> list[str]:
    names = list(names)
    return [n for n in first if n in names] + [n for n in names if n not in first]


def model_colours(names: Iterable[str]) -> dict[str, str]:
    """One colour per model: base blue, fine-tuned vermillion, the rest of Okabe-Ito in order."""
    others = itertools.cycle([c for c in OKABE_ITO if c not in ROLE_COLOURS.values()])
    return {n: ROLE_COLOURS.get(n) or next(others) for n in names}


def _finite(x: Any) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _fmt(x: Any, spec: str = ".2f") -> str:
    v = _finite(x)
    return "n/a" if v is None else format(v, spec)


def _grid(values: Any) -> np.ndarray:
    """A 2-D float array from nested lists, with None/NaN as NaN (partial rows allowed)."""
    rows = [list(r) if r is not None else [] for r in (values or [])]
    width = max((len(r) for r in rows), default=0)
    out = np.full((len(rows), width), np.nan)
    for i, r in enumerate(rows):
        out[i, : len(r)] = [np.nan if _finite(v) is None else float(v) for v in r]
    return out


def _plain(a: np.ndarray) -> list[list[float | None]]:
    return [[None if not np.isfinite(v) else float(v) for v in row] for row in a]


def _range(arrays: Iterable[np.ndarray]) -> tuple[float, float] | None:
    vals = np.concatenate([a[np.isfinite(a)].ravel() for a in arrays] or [np.array([])])
    if not vals.size:
        return None
    lo, hi = float(vals.min()), float(vals.max())
    return (lo, hi) if hi > lo else (lo - 0.5, hi + 0.5)


def _truncate(text: str, n: int = 80) -> str:
    text = " ".join(str(text).split())
    return html.escape(text if len(text) <= n else text[: n - 1] + "…", quote=False)


# ---------------------------------------------------------------------------- correlation
CORRELATION_SETS = ("harmful", "task", "general")
CORRELATION_NUMBERS = ("r", "ci_low", "ci_high", "p_value", "n", "null_r_mean", "null_r_min", "null_r_max", "null_n")
NULL_NOTE = "null r: base vs base + random noise of the fine-tune's per-tensor size"


def _correlation_sets(result: dict | None) -> list[str]:
    result = result or {}
    return [s for s in _ordered(result, CORRELATION_SETS) if isinstance(result[s], dict) and result[s].get("pairs")]


def _null_range(data: dict) -> str:
    """'lo to hi' of a set's null r values, or '' when the answer has none."""
    lo, hi = _finite(data.get("null_r_min")), _finite(data.get("null_r_max"))
    return "" if lo is None or hi is None else f"{lo:.2f} to {hi:.2f}"


def _panel_title(name: str, data: dict) -> str:
    title = f"{name} (r = {_fmt(data.get('r'))}, n = {len(data['pairs'])})"
    null = _null_range(data)
    return f"{title}<br>null r {null}" if null else title


def correlation_scatter(result: dict | None) -> go.Figure:
    """Per set, each prompt's loss under the base (x) and the fine-tuned model (y), with y = x;
    each panel's title gives r and, where computed, the null r range of a same-size random drift."""
    title = "Per-prompt loss: base vs fine-tuned"
    sets = _correlation_sets(result)
    if not sets:
        return no_data(title)
    titles = [_panel_title(s, result[s]) for s in sets]
    fig = make_subplots(rows=1, cols=len(sets), subplot_titles=titles, horizontal_spacing=0.08)
    for col, name in enumerate(sets, start=1):
        _add_correlation_panel(fig, result[name], name, col)
    fig.update_xaxes(title_text="base model loss (nats)")
    fig.update_yaxes(title_text="fine-tuned model loss (nats)", col=1)
    if any(_null_range(result[s]) for s in sets):
        title = f"{title}<br><sup>{NULL_NOTE}</sup>"
    return _finish(fig, title, showlegend=True, legend=dict(orientation="h", y=-0.18, x=0), margin=dict(t=150))


def _add_correlation_panel(fig: go.Figure, data: dict, name: str, col: int) -> None:
    pairs = np.array(
        [[_finite(p[0]), _finite(p[1])] for p in data["pairs"] if p is not None and len(p) >= 2], dtype=float
    ).reshape(-1, 2)
    prompts = list(data.get("prompts") or [])
    hover = [_truncate(prompts[i]) if i < len(prompts) else f"prompt {i + 1}" for i in range(len(pairs))]
    fig.add_trace(
        go.Scatter(
            x=_plain(pairs[:, :1].T)[0],
            y=_plain(pairs[:, 1:].T)[0],
            mode="markers",
            name=name,
            marker=dict(color=SET_COLOURS.get(name, OKABE_ITO[4]), size=11, opacity=0.75),
            customdata=hover,
            hovertemplate="%{customdata}<br>base %{x:.3f} nats<br>fine-tuned %{y:.3f} nats<extra>" + name + "</extra>",
        ),
        row=1,
        col=col,
    )
    bounds = _range([pairs])
    if bounds is None:
        return
    pad = 0.05 * (bounds[1] - bounds[0])
    lo, hi = bounds[0] - pad, bounds[1] + pad
    fig.add_trace(
        go.Scatter(
            x=[lo, hi],
            y=[lo, hi],
            mode="lines",
            name="y = x",
            legendgroup="y = x",
            showlegend=col == 1,
            line=dict(color="#777777", dash="dash", width=2),
            hoverinfo="skip",
        ),
        row=1,
        col=col,
    )
    fig.update_xaxes(range=[lo, hi], row=1, col=col)
    fig.update_yaxes(range=[lo, hi], row=1, col=col)


def _interval_arrays(result: dict, sets: list[str], model: str) -> dict[str, list[float]] | None:
    """Plotly error_y arrays from each set's ``mean_loss_<model>_ci``, or None if any is missing."""
    plus, minus = [], []
    for s in sets:
        mean, ci = _finite(result[s].get(f"mean_loss_{model}")), result[s].get(f"mean_loss_{model}_ci")
        lo, hi = (_finite(ci[0]), _finite(ci[1])) if isinstance(ci, (list, tuple)) and len(ci) == 2 else (None, None)
        if mean is None or lo is None or hi is None:
            return None
        plus.append(max(hi - mean, 0.0))
        minus.append(max(mean - lo, 0.0))
    return {"array": plus, "arrayminus": minus}


def mean_loss_bars(result: dict | None) -> go.Figure:
    """Mean loss per set for the base and the fine-tuned model, side by side, with 95% bootstrap
    intervals where the answer has them."""
    title = "Mean loss per set: base vs fine-tuned"
    result = result or {}
    sets = [
        s for s in _ordered(result, CORRELATION_SETS) if isinstance(result[s], dict) and "mean_loss_base" in result[s]
    ]
    if not sets:
        return no_data(title)
    fig = go.Figure()
    with_ci = False
    for model in ("base", "finetuned"):
        ys = [_finite(result[s].get(f"mean_loss_{model}")) for s in sets]
        errors = _interval_arrays(result, sets, model)
        with_ci = with_ci or errors is not None
        fig.add_trace(
            go.Bar(
                x=sets,
                y=ys,
                name=_label(model),
                marker_color=ROLE_COLOURS[model],
                error_y=dict(type="data", color="#444444", thickness=2, **errors) if errors else None,
                texttemplate="%{y:.2f}",
                textposition="outside",
            )
        )
    fig.update_xaxes(title_text="prompt set")
    fig.update_yaxes(title_text="mean loss (nats)" + (", 95% bootstrap CI" if with_ci else ""))
    return _finish(fig, title, barmode="group")


def correlation_table(result: dict | None) -> list[dict]:
    """One row per set: Pearson r, its 95% confidence interval, p-value, n and the null r range
    (base vs base + random noise of the fine-tune's per-tensor size; mean and min to max)."""
    result = result or {}
    rows = []
    for name in _correlation_sets(result):
        d = result[name]
        null = _null_range(d)
        rows.append(
            {
                "set": name,
                "Pearson r": _finite(d.get("r")),
                "95% CI": f"[{_fmt(d.get('ci_low'))}, {_fmt(d.get('ci_high'))}]",
                "p-value": _fmt(d.get("p_value"), ".2g"),
                "n": int(d.get("n", len(d["pairs"]))),
                "null r (range)": f"{_fmt(d.get('null_r_mean'))} ({null})" if null else "not computed",
                "null n × seeds": f"{d.get('null_n', 0)} × {len(d.get('null_r') or [])}" if null else "",
            }
        )
    return rows


# ---------------------------------------------------------------------------- landscape
LANDSCAPE_SETS = ("harmful", "benign")
LANDSCAPE_MODELS = ("base", "finetuned")
CAMERA = dict(eye=dict(x=1.25, y=-1.25, z=0.75), up=dict(x=0, y=0, z=1))


def _coefficient_unit(result: dict | None) -> str:
    """What a grid coefficient measures (answers before ``coefficient_units`` used weight-norm fractions)."""
    units = (result or {}).get("coefficient_units") or "fraction of weight norm"
    return "weight-space distance" if units == "weight-space distance" else "fraction of weight norm"


def landscape_surfaces(result: dict | None) -> go.Figure:
    """Rows: sets; columns: models. One shared colour scale and z range, one camera for all."""
    title = f"Loss landscapes (α, β: {_coefficient_unit(result)} along d1, d2)"
    surfaces = {
        s: {m: _grid(z) for m, z in (by_model or {}).items() if z}
        for s, by_model in ((result or {}).get("surfaces") or {}).items()
    }
    sets = [s for s in _ordered(surfaces, LANDSCAPE_SETS) if surfaces[s]]
    if not sets:
        return no_data(title)
    models = _ordered({m for s in sets for m in surfaces[s]}, LANDSCAPE_MODELS)
    bounds = _range(z for s in sets for z in surfaces[s].values()) or (0.0, 1.0)
    diff = (result or {}).get("structural_difference") or {}
    floor = (result or {}).get("structural_difference_floor") or {}
    fig = make_subplots(
        rows=len(sets),
        cols=len(models),
        specs=[[{"type": "scene"}] * len(models) for _ in sets],
        subplot_titles=[_surface_title(s, m, surfaces, diff, floor) for s in sets for m in models],
        horizontal_spacing=0.02,
        vertical_spacing=0.06,
    )
    coords = list((result or {}).get("coords") or [])
    first = True
    for r, s in enumerate(sets, start=1):
        for c, m in enumerate(models, start=1):
            if m in surfaces[s]:
                fig.add_trace(_surface(surfaces[s][m], coords, bounds, f"{s} / {_label(m)}", first), row=r, col=c)
                first = False
    fig.update_scenes(
        camera=CAMERA,
        aspectmode="manual",
        aspectratio=dict(x=1, y=1, z=0.75),
        xaxis_title_text="α on d1",
        yaxis_title_text="β on d2",
        zaxis_title_text=LOSS,
        zaxis_range=list(bounds),
    )
    return _finish(fig, title, height=120 + 480 * len(sets))


def _surface_title(s: str, m: str, surfaces: dict, diff: dict, floor: dict | None = None) -> str:
    """``set / model``; on the fine-tune the structural difference and its noise floor, if known."""
    text = f"{s} / {_label(m)}"
    if m not in surfaces[s]:
        return text + " (computing)"
    if m != "base" and _finite(diff.get(s)) is not None:
        extra = f", floor {_fmt(floor[s], '.1f')}%" if _finite((floor or {}).get(s)) is not None else ""
        text += f" (structural difference {_fmt(diff[s], '.1f')}%{extra})"
    return text


def _surface(z: np.ndarray, coords: list, bounds: tuple[float, float], name: str, showscale: bool) -> go.Surface:
    """z[i][j] is the loss at (coords[i] on d1, coords[j] on d2); transposed so x is d1."""
    axis = coords if len(coords) == z.shape[0] else list(range(z.shape[0]))
    other = coords if len(coords) == z.shape[1] else list(range(z.shape[1]))
    return go.Surface(
        x=axis,
        y=other,
        z=_plain(z.T),
        name=name,
        colorscale=SEQUENTIAL,
        cmin=bounds[0],
        cmax=bounds[1],
        showscale=showscale,
        colorbar=dict(title=dict(text=LOSS, side="right"), len=0.8),
        hovertemplate="α %{x:.3f}<br>β %{y:.3f}<br>loss %{z:.3f} nats<extra>" + name + "</extra>",
    )


def cross_section_figure(result: dict | None) -> go.Figure:
    """Loss along d1 (β = 0) and along d2 (α = 0) through the trained weights, for each set and model."""
    title = "Landscape cross-sections through the trained weights"
    sections = (result or {}).get("cross_sections") or {}
    lines = [(s, m, cs) for s in _ordered(sections, LANDSCAPE_SETS) for m, cs in _model_items(sections[s]) if cs]
    if not lines:
        return no_data(title)
    fig = make_subplots(
        rows=1,
        cols=2,
        subplot_titles=["along d1 (β = 0)", "along d2 (α = 0)"],
        shared_yaxes=True,
        horizontal_spacing=0.05,
    )
    coords = list((result or {}).get("coords") or [])
    for s, m, cs in lines:
        for col, key in enumerate(("d1", "d2"), start=1):
            ys = [_finite(v) for v in cs.get(key) or []]
            xs = coords if len(coords) == len(ys) else list(range(len(ys)))
            fig.add_trace(
                go.Scatter(
                    x=xs,
                    y=ys,
                    mode="lines+markers",
                    name=f"{s} / {_label(m)}",
                    legendgroup=f"{s}/{m}",
                    showlegend=col == 1,
                    line=dict(color=SET_COLOURS.get(s, OKABE_ITO[4]), dash="solid" if m == "base" else "dash", width=3),
                ),
                row=1,
                col=col,
            )
    unit = _coefficient_unit(result)
    fig.update_xaxes(title_text=f"α ({unit})", col=1)
    fig.update_xaxes(title_text=f"β ({unit})", col=2)
    fig.update_yaxes(title_text=LOSS, col=1)
    return _finish(fig, title)


def _model_items(by_model: dict | None) -> list[tuple[str, Any]]:
    by_model = by_model or {}
    return [(m, by_model[m]) for m in _ordered(by_model, LANDSCAPE_MODELS)]


# ---------------------------------------------------------------------------- curvature
CONDITION_LABELS = {"low_dimensional": "low-dimensional", "sharp_curvature": "sharp curvature", "coupling": "coupling"}
CURVATURE_MODELS = {
    "aligned": ("aligned base", ROLE_COLOURS["base"]),
    "finetuned": ("fine-tuned", ROLE_COLOURS["finetuned"]),
}


def _curvature_blocks(result: dict) -> list[tuple[str, dict, str]]:
    """(label, block, colour) per model: the aligned and fine-tuned blocks, or an older answer's
    safety and task spectra."""
    blocks = [(label, result[key], colour) for key, (label, colour) in CURVATURE_MODELS.items() if key in result]
    if any(isinstance(block, dict) for _, block, _ in blocks):
        return [b for b in blocks if isinstance(b[1], dict)]
    task = {"safety_eigenvalues": result.get("task_eigenvalues")}
    return [("safety", result, OKABE_ITO[1]), ("task", task, OKABE_ITO[0])]


def hessian_spectrum(result: dict | None) -> go.Figure:
    """Top eigenvalues of the safety Hessian by rank on each model, with each model's mean
    eigenvalue tr(H)/n as a dotted line; log y when all values are positive."""
    title = "Safety-Hessian spectrum: top eigenvalues"
    result = result or {}
    series = [
        (label, [_finite(v) for v in block.get("safety_eigenvalues") or []], block, colour)
        for label, block, colour in _curvature_blocks(result)
    ]
    if not any(ys for _, ys, _, _ in series):
        return no_data(title)
    fig = go.Figure()
    values: list[float] = []
    for label, ys, block, colour in series:
        if not ys:
            continue
        fig.add_trace(
            go.Scatter(
                x=list(range(1, len(ys) + 1)),
                y=ys,
                mode="lines+markers",
                name=f"{label} Hessian" if label in ("safety", "task") else label,
                line=dict(color=colour, width=3),
                marker=dict(size=10),
            )
        )
        values += [v for v in ys if v is not None]
        mean = _mean_eigenvalue(block)
        if mean is not None:
            fig.add_hline(y=mean, line=dict(color=colour, dash="dot", width=2))
            suffix = "" if label in ("safety", "task") else f" ({label})"
            fig.add_trace(
                go.Scatter(
                    x=[None],
                    y=[None],
                    mode="lines",
                    name=f"mean eigenvalue tr(H)/n = {mean:.2g}{suffix}",
                    line=dict(color=colour, dash="dot", width=2),
                )
            )
            values.append(mean)
    longest = max(len(ys) for _, ys, _, _ in series)
    fig.update_xaxes(title_text="eigenvalue rank (1 = largest)", dtick=1 if longest <= 25 else None)
    fig.update_yaxes(title_text="eigenvalue λ (nats per squared weight unit)", **_value_axis(values))
    return _finish(fig, title)


def spectral_density(result: dict | None) -> go.Figure:
    """The safety Hessian's eigenvalue density by stochastic Lanczos quadrature on each model
    (``--density-runs``), log y as PyHessian plots it, with the run count and broadening."""
    title = "Safety-Hessian spectral density (stochastic Lanczos quadrature)"
    series = [
        (label, block["density"], colour)
        for label, block, colour in _curvature_blocks(result or {})
        if isinstance(block.get("density"), dict) and block["density"].get("density")
    ]
    if not series:
        return no_data(title, "no density: run with --density-runs 1 or more")
    fig = go.Figure()
    peak = max(max(d["density"]) for _, d, _ in series)
    floor = peak * 1e-8 if peak > 0 else 1e-12
    for label, d, colour in series:
        fig.add_trace(
            go.Scatter(
                x=d["grid"],
                y=[max(float(v), floor) for v in d["density"]],
                mode="lines",
                name=f"{label} ({d['runs']} probes × {d['steps']} steps, σ = {d['sigma']:.2g})",
                line=dict(color=colour, width=3),
            )
        )
    fig.update_xaxes(title_text="eigenvalue λ (nats per squared weight unit)")
    fig.update_yaxes(title_text="density (share of eigenvalues per unit λ)", type="log", exponentformat="power")
    return _finish(fig, title)


def _value_axis(values: list[float]) -> dict[str, Any]:
    """Log axis with one labelled tick per decade when all values are positive, else linear."""
    if not values or min(values) <= 0:
        return {"type": "linear"}
    decades = math.log10(max(values) / min(values))
    return {"type": "log", "dtick": 1, "exponentformat": "power"} if decades >= 2 else {"type": "log"}


def _mean_eigenvalue(result: dict) -> float | None:
    trace, n = _finite(result.get("safety_trace")), _finite(result.get("n_params"))
    return trace / n if trace is not None and n and trace > 0 else None


def drift_figure(drift: dict | None) -> go.Figure:
    """Alignment loss under gradient descent with the fitted L(0) + κ·t^p curves (the free
    exponent with its 95% interval, R² each); the verdict on the quartic law in the title."""
    verdict = ((drift or {}).get("verdict") or {}).get("label")
    title = "Alignment drift under fine-tuning" + (f": {verdict}" if verdict else "")
    drift = drift or {}
    steps = [_finite(s) for s in drift.get("steps") or []]
    losses = [_finite(v) for v in drift.get("alignment_loss") or []]
    n = min(len(steps), len(losses))
    if not n:
        return no_data(title)
    steps, losses = steps[:n], losses[:n]
    fig = go.Figure(
        go.Scatter(
            x=steps,
            y=losses,
            mode="markers+lines",
            name="measured",
            marker=dict(size=11, color="#000000"),
            line=dict(color="#000000", width=1),
        )
    )
    for i, (name, fit) in enumerate((drift.get("fits") or {}).items()):
        curve = _power_law_curve(steps, losses[0], fit or {})
        if curve is not None:
            fig.add_trace(
                go.Scatter(
                    x=curve[0],
                    y=curve[1],
                    mode="lines",
                    line=dict(color=OKABE_ITO[i % 6], width=3, dash=DASHES[(i + 1) % len(DASHES)]),
                    name=f"{_fit_name(name)}: p = {_exponent_text(fit)}, R² = {_fmt(fit.get('r2'), '.3f')}",
                )
            )
    fig.update_xaxes(title_text="gradient-descent step")
    kl = drift.get("loss") == "kl"
    fig.update_yaxes(title_text="KL to the aligned model (nats)" if kl else "alignment loss (nats)")
    return _finish(fig, title, legend=dict(x=0.01, y=0.99, xanchor="left", yanchor="top"))


def _exponent_text(fit: dict) -> str:
    """The exponent, with its 95% interval when the fit has one."""
    lo, hi = _finite(fit.get("ci_low")), _finite(fit.get("ci_high"))
    interval = f" [{lo:.2f}, {hi:.2f}]" if lo is not None and hi is not None else ""
    return _fmt(fit.get("exponent")) + interval


def _fit_name(name: str) -> str:
    if name == "free":
        return "free-exponent fit"
    base, _, power = name.partition("^")
    return f"κ·{base}<sup>{power}</sup> fit" if power else f"{name} fit"


def _power_law_curve(steps: list, l0: float | None, fit: dict) -> tuple[list, list] | None:
    """L(s) = L(0) + κ·(s - offset)^p on 100 points across the measured steps (the fit of
    ``fit_power_laws``; ``time_offset`` is 0.5 for gradient descent's half-step clock)."""
    kappa, p = _finite(fit.get("kappa")), _finite(fit.get("exponent"))
    offset = _finite(fit.get("time_offset")) or 0.0
    known = [s for s in steps if s is not None]
    if kappa is None or p is None or l0 is None or len(known) < 2:
        return None
    t = np.linspace(min(known), max(known), 100)
    t = t[t > offset]
    return t.tolist(), (l0 + kappa * (t - offset) ** p).tolist()


def conditions_table(result: dict | None) -> list[dict]:
    """The alignment-instability condition per model: its three parts (value, 95% interval,
    threshold, verdict), whether all three hold, and the first-order orthogonality beside them."""
    result = result or {}
    blocks = [(label, block) for label, block, _ in _curvature_blocks(result) if label != "task"]
    rows = []
    for label, block in blocks:
        rows += _condition_rows("aligned base" if label == "safety" else label, block.get("conditions") or {})
    return rows


def _condition_rows(model: str, cond: dict) -> list[dict]:
    labels = {**CONDITION_LABELS, "all_hold": "all three", "orthogonality": "initial orthogonality"}
    rows = []
    for key, label in labels.items():
        part = cond.get(key)
        if key == "all_hold" and part is not None and rows:
            rows.append(
                {"model": model, "condition": label, "what": "the instability condition holds", "holds": bool(part)}
            )
        elif isinstance(part, dict):
            rows.append(
                {
                    "model": model,
                    "condition": label,
                    "what": part.get("what", ""),
                    "value": _finite(part.get("value")),
                    "ci_low": _finite(part.get("ci_low")),
                    "ci_high": _finite(part.get("ci_high")),
                    "threshold": _finite(part.get("threshold")),
                    "holds": bool(part.get("holds")),
                }
            )
    return rows


# ---------------------------------------------------------------------------- safety basin
def _ci_arrays(values: list, cis: Any) -> dict[str, list[float]] | None:
    """Plotly error_y arrays from [low, high] pairs beside ``values``, or None if any is missing."""
    if not isinstance(cis, (list, tuple)) or len(cis) != len(values):
        return None
    plus, minus = [], []
    for v, ci in zip(values, cis):
        lo, hi = (_finite(ci[0]), _finite(ci[1])) if isinstance(ci, (list, tuple)) and len(ci) == 2 else (None, None)
        if v is None or lo is None or hi is None:
            return None
        plus.append(max(hi - v, 0.0))
        minus.append(max(v - lo, 0.0))
    return {"array": plus, "arrayminus": minus}


def basin_curves(result: dict | None) -> go.Figure:
    """Attack success rate along each random direction, with 95% Wilson intervals where the answer
    has them: one colour per model, one dash per direction; a dotted line at the basin-edge ASR."""
    title = "Safety basin: attack success rate along random directions"
    models = [m for m, r in (result or {}).items() if isinstance(r, dict) and r.get("lines")]
    if not models:
        return no_data(title)
    colours = model_colours(models)
    fig = go.Figure()
    with_ci = False
    for m in models:
        coords = list(result[m].get("coords") or [])
        cis = result[m].get("lines_ci") or []
        for k, line in enumerate(result[m]["lines"]):
            ys = [_finite(v) for v in line]
            xs = coords[: len(ys)] if len(coords) >= len(ys) else list(range(len(ys)))
            errors = _ci_arrays(ys, cis[k] if k < len(cis) else None)
            with_ci = with_ci or errors is not None
            fig.add_trace(
                go.Scatter(
                    x=xs,
                    y=ys,
                    mode="lines+markers",
                    name=f"{_label(m)}, direction {k + 1}",
                    legendgroup=m,
                    line=dict(color=colours[m], dash=DASHES[k % len(DASHES)], width=3),
                    marker=dict(size=8),
                    error_y=dict(type="data", color=colours[m], thickness=1.5, **errors) if errors else None,
                )
            )
    edge = _finite(result[models[0]].get("edge_asr"))
    if edge is not None:
        fig.add_hline(
            y=edge, line=dict(color="#444444", dash="dot", width=2), annotation_text=f"basin edge, ASR {edge:g}%"
        )
    fig.update_xaxes(title_text=ALPHA)
    fig.update_yaxes(title_text="attack success rate (%)" + (", 95% Wilson CI" if with_ci else ""), range=PERCENT_RANGE)
    return _finish(fig, title)


def basin_plane(result: dict | None) -> go.Figure:
    """The 2-D ASR plane per model, side by side, on one 0-100 % colour scale."""
    title = "Safety basin: attack success rate on a 2-D plane"
    models = [m for m, r in (result or {}).items() if isinstance(r, dict) and r.get("plane")]
    if not models:
        return no_data(title)
    titles = [f"{_label(m)} (plane mean margin {_fmt(result[m].get('visage_plane'), '.1f')})" for m in models]
    fig = make_subplots(rows=1, cols=len(models), subplot_titles=titles, horizontal_spacing=0.06)
    for col, m in enumerate(models, start=1):
        z = _grid(result[m]["plane"])
        coords = list(result[m].get("plane_coords") or [])
        axis = coords if len(coords) == z.shape[0] else list(range(z.shape[0]))
        other = coords if len(coords) == z.shape[1] else list(range(z.shape[1]))
        fig.add_trace(
            go.Heatmap(
                x=axis,
                y=other,
                z=_plain(z.T),
                zmin=0,
                zmax=100,
                colorscale=SEQUENTIAL,
                showscale=col == 1,
                name=_label(m),
                colorbar=dict(title=dict(text="ASR (%)", side="right")),
                hovertemplate="α %{x:.3f}<br>β %{y:.3f}<br>ASR %{z:.1f}%<extra>" + _label(m) + "</extra>",
            ),
            row=1,
            col=col,
        )
        fig.update_xaxes(title_text=ALPHA, row=1, col=col)
    fig.update_yaxes(title_text=BETA, col=1)
    return _finish(fig, title)


VISAGE_SCORES = {
    "visage": "VISAGE (Peng et al.: inside the basin)",
    "visage_plane": "plane mean",
    "visage_1d": "1-D mean",
}
BASIN_NUMBERS = (
    "visage",
    "visage_ci",
    "visage_plane",
    "visage_plane_ci",
    "visage_1d",
    "visage_1d_ci",
    "basin_radius",
    "basin_radius_ci",
    "center_asr",
    "center_asr_ci",
    "radius",
)


def visage_bars(result: dict | None) -> go.Figure:
    """VISAGE scores (mean safety margin 100 − ASR) per model with 95% bootstrap intervals; higher is safer."""
    title = "VISAGE safety margin per model (higher is safer)"
    models = [m for m, r in (result or {}).items() if isinstance(r, dict) and any(k in r for k in VISAGE_SCORES)]
    if not models:
        return no_data(title)
    fig = go.Figure()
    with_ci = False
    for i, (key, label) in enumerate(VISAGE_SCORES.items()):
        ys = [_finite(result[m].get(key)) for m in models]
        if any(v is not None for v in ys):
            errors = _ci_arrays(ys, [result[m].get(f"{key}_ci") for m in models])
            with_ci = with_ci or errors is not None
            fig.add_trace(
                go.Bar(
                    x=[_label(m) for m in models],
                    y=ys,
                    name=label,
                    marker_color=OKABE_ITO[[0, 2, 3][i]],
                    error_y=dict(type="data", color="#444444", thickness=2, **errors) if errors else None,
                    texttemplate="%{y:.1f}",
                    textposition="outside",
                )
            )
    fig.update_xaxes(title_text="model")
    fig.update_yaxes(
        title_text="safety margin, 100 − ASR (%)" + (", 95% bootstrap CI" if with_ci else ""), range=[0, 115]
    )
    return _finish(fig, title, barmode="group")


def _with_ci(value: Any, ci: Any, spec: str) -> str:
    if isinstance(ci, (list, tuple)) and len(ci) == 2:
        return f"{_fmt(value, spec)} [{_fmt(ci[0], spec)}, {_fmt(ci[1], spec)}]"
    return _fmt(value, spec)


def basin_table(result: dict | None) -> list[dict]:
    """One row per model: VISAGE (headline, plane, 1-D) and the basin radius with their 95% intervals,
    the unperturbed ASR, and the sampled range (fitted on the aligned model, shared by every model)."""
    rows = []
    for m, r in (result or {}).items():
        if not isinstance(r, dict) or "visage" not in r:
            continue
        rows.append(
            {
                "model": _label(m),
                "VISAGE [95% CI]": _with_ci(r.get("visage"), r.get("visage_ci"), ".1f"),
                "plane mean [95% CI]": _with_ci(r.get("visage_plane"), r.get("visage_plane_ci"), ".1f"),
                "1-D mean [95% CI]": _with_ci(r.get("visage_1d"), r.get("visage_1d_ci"), ".1f"),
                "basin radius [95% CI]": _with_ci(r.get("basin_radius"), r.get("basin_radius_ci"), ".3f"),
                "unperturbed ASR (%) [95% CI]": _with_ci(r.get("center_asr"), r.get("center_asr_ci"), ".1f"),
                "sampled range (±)": _fmt(r.get("radius"), ".3f"),
            }
        )
    return rows


# ---------------------------------------------------------------------------- restoration
RESTORATION_PANELS = (
    ("forget loss", "loss (nats)", (("forget_loss", "forget"),), None),
    ("retain loss", "loss (nats)", (("retain_loss", "retain"),), None),
    ("harmful rate", "harmful answers (%)", (("harmful_rate", "harmful rate"),), PERCENT_RANGE),
    ("task exact match", "exact match (%)", (("task_exact_match", "task EM"),), PERCENT_RANGE),
    (
        "Pearson r with the base model's losses",
        "Pearson r",
        (("forget_r_base", "r, forget set"), ("retain_r_base", "r, retain set")),
        [-1.05, 1.05],
    ),
    (
        "distance of the weights",
        "Frobenius norm of Δweights",
        (("distance_to_finetuned", "distance to fine-tuned"), ("distance_to_base", "distance to base")),
        None,
    ),
)
SERIES_COLOURS = {
    "forget": OKABE_ITO[1],
    "retain": OKABE_ITO[0],
    "r, forget set": OKABE_ITO[1],
    "r, retain set": OKABE_ITO[0],
    "distance to fine-tuned": OKABE_ITO[4],
    "distance to base": "#000000",
}


def restoration_live(record: dict | None) -> go.Figure:
    """Small multiples (2 x 3) of a restoration run's monitored metrics against step."""
    record = record or {}
    title = f"Restoration: {record.get('method', 'run')}" + (f" ({record['status']})" if record.get("status") else "")
    steps = [s for s in record.get("steps") or [] if isinstance(s, dict)]
    if not steps:
        return no_data(title)
    xs = [s.get("step", i) for i, s in enumerate(steps)]
    fig = make_subplots(
        rows=2, cols=3, subplot_titles=[p[0] for p in RESTORATION_PANELS], horizontal_spacing=0.11, vertical_spacing=0.2
    )
    for i, (_, ytitle, series, yrange) in enumerate(RESTORATION_PANELS):
        row, col = divmod(i, 3)
        for key, name in series:
            ys = [_finite(s.get(key)) for s in steps]
            if any(v is not None for v in ys):
                fig.add_trace(
                    go.Scatter(
                        x=xs,
                        y=ys,
                        mode="lines+markers",
                        name=name,
                        showlegend=len(series) > 1,
                        legendgroup=f"{i}-{name}",
                        line=dict(color=SERIES_COLOURS.get(name, OKABE_ITO[2]), width=3),
                        marker=dict(size=9),
                    ),
                    row=row + 1,
                    col=col + 1,
                )
        fig.update_yaxes(title_text=ytitle, range=yrange, row=row + 1, col=col + 1)
        fig.update_xaxes(
            title_text="step", row=row + 1, col=col + 1, rangemode="tozero", tick0=0, dtick=_step_dtick(xs)
        )
    return _finish(fig, title, height=860, legend=dict(orientation="h", y=-0.12, x=0))


def _step_dtick(steps: list) -> int:
    """Whole-number step ticks, about eight of them."""
    last = max((_finite(s) or 0 for s in steps), default=0)
    return max(1, math.ceil(last / 8))


BEFORE_AFTER_METRICS = {
    "harmful_rate": "harmful rate (%)",
    "prefill_asr": "prefill attack success (%)",
    "task_exact_match": "task exact match (%)",
    "over_refusal": "over-refusal (%)",
    "over_refusal_general": "over-refusal, general (%)",
    "over_refusal_borderline": "over-refusal, borderline (%)",
    "general_capability": "general capability, mean acc (%)",
    "visage": "VISAGE safety margin (%)",
}


def before_after_table(record: dict | None) -> list[dict]:
    """One row per evaluated metric: before, after and the change (after − before)."""
    record = record or {}
    before, after = record.get("before") or {}, record.get("after") or {}
    rows = []
    for key in _ordered(set(before) | set(after), BEFORE_AFTER_METRICS):
        b, a = _finite(before.get(key)), _finite(after.get(key))
        if b is None and a is None:
            continue
        row = {
            "metric": BEFORE_AFTER_METRICS.get(key, _label(key)),
            "before": b,
            "after": a,
            "change": a - b if a is not None and b is not None else None,
        }
        for side, summary in (("before", before), ("after", after)):
            if ci := (summary.get("intervals") or {}).get(key):
                row[f"{side} 95% CI"] = f"{ci['ci_low']:.1f}–{ci['ci_high']:.1f}"
        rows.append(row)
    return rows


# ---------------------------------------------------------------------------- trajectories
PATH_COLOURS = {"curvature": "#000000", "gradient-ascent": "#D55E00"}


def safelora_similarity(notes: dict | None) -> go.Figure:
    """Safe LoRA's per-module similarity cos(C dW, dW) (Hsu et al. 2024), sorted, projected and kept
    modules apart, with the threshold: where it falls in the distribution decides the model."""
    title = "Safe LoRA: similarity of each module's update to its safety projection"
    notes = notes or {}
    similarity = notes.get("similarity") or {}
    if not similarity:
        return no_data(title)
    names = sorted(similarity, key=lambda n: similarity[n])
    projected = set(notes.get("projected") or [])
    fig = go.Figure()
    for label, colour, chosen in (("projected", OKABE_ITO[1], True), ("kept", OKABE_ITO[0], False)):
        rank = [i + 1 for i, n in enumerate(names) if (n in projected) == chosen]
        fig.add_trace(
            go.Bar(
                x=rank,
                y=[similarity[names[i - 1]] for i in rank],
                hovertext=[names[i - 1] for i in rank],
                name=f"{label} ({len(rank)})",
                marker_color=colour,
            )
        )
    if notes.get("mode", "threshold") == "threshold" and _finite(notes.get("threshold")) is not None:
        fig.add_hline(y=notes["threshold"], line_dash="dash", annotation_text=f"threshold {notes['threshold']}")
    fig.update_xaxes(title_text=f"module, by similarity ({len(names)} LoRA modules)")
    fig.update_yaxes(title_text="cos(C ΔW, ΔW)", range=[min(0.0, min(similarity.values())), 1.05])
    return _finish(fig, title, barmode="overlay", showlegend=True)


def trajectory_contour(result: dict | None) -> go.Figure:
    """Per learning rate, the objective J = L_forget − L_retain over the PCA plane and both paths; a
    non-numeric key (the stored restoration runs' plane) is drawn last, titled by its name."""
    title = "Restoration paths over J = L_forget − L_retain (★ = end)"
    lrs = sorted(
        (lr for lr, r in (result or {}).items() if isinstance(r, dict) and (r.get("objective") or r.get("paths"))),
        key=_lr_key,
    )
    if not lrs:
        return no_data(title)
    names = [f"learning rate {lr}" if _finite(lr) is not None else f"{lr} (as restored)" for lr in lrs]
    fig = make_subplots(rows=1, cols=len(lrs), subplot_titles=names, horizontal_spacing=0.08)
    grids = {lr: _grid(result[lr].get("objective")) for lr in lrs}
    bounds = _range(grids.values())
    for col, lr in enumerate(lrs, start=1):
        _add_trajectory_panel(fig, result[lr], grids[lr], bounds, col)
    return _finish(fig, title, legend=dict(orientation="h", y=-0.2, x=0))


def _lr_key(lr: str) -> float:
    v = _finite(lr)
    return v if v is not None else math.inf


def _add_trajectory_panel(
    fig: go.Figure, data: dict, z: np.ndarray, bounds: tuple[float, float] | None, col: int
) -> None:
    if z.size and bounds:
        fig.add_trace(
            go.Contour(
                x=data.get("x"),
                y=data.get("y"),
                z=_plain(z),
                zmin=bounds[0],
                zmax=bounds[1],
                colorscale=SEQUENTIAL,
                showscale=col == 1,
                name="J",
                contours=dict(showlines=True),
                line=dict(width=0.5, color="rgba(255,255,255,0.5)"),
                colorbar=dict(title=dict(text="J (nats)", side="right")),
                hovertemplate="PC1 %{x:.3g}<br>PC2 %{y:.3g}<br>J %{z:.3f} nats<extra></extra>",
            ),
            row=1,
            col=col,
        )
    for method, path in (data.get("paths") or {}).items():
        pts = [(p[0], p[1]) for p in path or [] if p is not None and len(p) >= 2]
        if pts:
            fig.add_trace(_path_trace(method, pts, data, col == 1), row=1, col=col)
    var = list(data.get("explained_variance") or [])
    for axis, k in ((fig.update_xaxes, 0), (fig.update_yaxes, 1)):
        share = f" ({_fmt(100 * var[k], '.1f')}% var)" if len(var) > k and _finite(var[k]) is not None else ""
        axis(title_text=f"PC{k + 1}{share}", row=1, col=col)


def _path_trace(method: str, pts: list[tuple[float, float]], data: dict, showlegend: bool) -> go.Scatter:
    n = len(pts)
    symbols = ["circle"] * n
    sizes = [9] * n
    symbols[0], sizes[0] = "square", 14
    if n > 1:
        symbols[-1], sizes[-1] = "star", 20
    forget = (data.get("final_forget_loss") or {}).get(method)
    retain = (data.get("final_retain_loss") or {}).get(method)
    suffix = (
        f": final L_forget {_fmt(forget)}, L_retain {_fmt(retain)} nats"
        if forget is not None or retain is not None
        else ""
    )
    colour = PATH_COLOURS.get(method, OKABE_ITO[4])
    return go.Scatter(
        x=[p[0] for p in pts],
        y=[p[1] for p in pts],
        mode="lines+markers",
        name=method + suffix,
        legendgroup=method,
        showlegend=showlegend,
        line=dict(color=colour, width=3),
        marker=dict(symbol=symbols, size=sizes, color=colour, line=dict(color="white", width=1.5)),
        customdata=list(range(n)),
        hovertemplate=method + "<br>step %{customdata}<extra></extra>",
    )


# ---------------------------------------------------------------------------- comparison
COMPARISON_METRICS = {
    "harmful_rate": "harmful rate",
    "prefill_asr": "prefill ASR",
    "task_exact_match": "task exact match",
    "over_refusal": "over-refusal",
    "general_capability": "general capability (acc)",
}


def _ci_bounds(text: Any) -> tuple[float, float] | None:
    """(low, high) of a table's ``"12.3–45.6"`` interval text, or None."""
    try:
        low, high = str(text).split("–")
        return float(low), float(high)
    except ValueError:
        return None


def pair_bars(metrics: dict | None) -> go.Figure:
    """Home's first look: the base and fine-tuned models' headline rates on the held-out split
    (the world's or ``evaluate``'s metrics, each with its Wilson interval) as ``comparison_bars``."""
    rows = []
    for model, m in (metrics or {}).items():
        if isinstance(m, dict):
            cis = m.get("intervals") or {}
            row = {"model": model, **{k: m[k] for k in COMPARISON_METRICS if k in m}}
            rows.append(row | {f"{k}_ci": f"{c['ci_low']}–{c['ci_high']}" for k, c in cis.items() if k in row})
    return comparison_bars({"table": rows}, "Base vs fine-tuned on the held-out split")


def comparison_bars(result: dict | None, title: str = "Restoration methods compared") -> go.Figure:
    """The headline metrics (%) of every model in a ``compare`` table, one colour per model, with
    their 95% intervals and a * on each value that differs from the fine-tune's (the table's McNemar
    test, p < 0.05): harm (harmful rate, prefill ASR) beside utility (task exact match, general
    capability) and over-refusal, so safety bought by refusing everything shows at a glance. The
    general-capability axis appears when the table has it."""
    rows = [r for r in (result or {}).get("table") or [] if isinstance(r, dict) and "model" in r]
    if not rows:
        return no_data(title)
    metrics = [k for k in COMPARISON_METRICS if k != "general_capability" or any(k in r for r in rows)]
    colours = model_colours([r["model"] for r in rows])
    fig = go.Figure()
    marked = False
    for r in rows:
        ys = [_finite(r.get(k)) for k in metrics]
        cis = [_ci_bounds(r.get(f"{k}_ci")) for k in metrics]
        differs = {m.strip() for m in str(r.get("significant_vs_finetuned") or "").split(",")}
        stars = ["*" if k in differs else "" for k in metrics]
        marked = marked or any(stars)
        error = None
        if any(cis):
            error = dict(
                type="data",
                symmetric=False,
                array=[ci[1] - y if ci and y is not None else 0 for ci, y in zip(cis, ys)],
                arrayminus=[y - ci[0] if ci and y is not None else 0 for ci, y in zip(cis, ys)],
                color="#555555",
                thickness=1.5,
            )
        fig.add_trace(
            go.Bar(
                x=[COMPARISON_METRICS[k] for k in metrics],
                y=ys,
                error_y=error,
                name=_label(r["model"]),
                marker_color=colours[r["model"]],
                text=[f"{y:.0f}{star}" if y is not None else "" for y, star in zip(ys, stars)],
                textposition="outside",
            )
        )
    note = "; * differs from the fine-tune, McNemar p < 0.05" if marked else ""
    fig.update_xaxes(title_text="metric (harm · over-refusal · utility)" + note)
    fig.update_yaxes(title_text="rate (%)" + (", 95% CI" if any(f"{k}_ci" in r for r in rows for k in metrics) else ""))
    fig.update_yaxes(range=[0, 115])
    return _finish(fig, title, barmode="group")


__all__ = [
    "OKABE_ITO",
    "TEMPLATE",
    "apply_theme",
    "basin_curves",
    "basin_plane",
    "basin_table",
    "before_after_table",
    "comparison_bars",
    "conditions_table",
    "correlation_scatter",
    "correlation_table",
    "cross_section_figure",
    "drift_figure",
    "hessian_spectrum",
    "landscape_surfaces",
    "mean_loss_bars",
    "model_colours",
    "no_data",
    "pair_bars",
    "restoration_live",
    "safelora_similarity",
    "slide_template",
    "spectral_density",
    "trajectory_contour",
    "visage_bars",
]


# ---------------------------------------------------------------------------- per-analysis figures
@dataclass(frozen=True)
class AnalysisFigures:
    """What the Report draws of one registered analysis (``core.geometry.registry.ANALYSES``),
    keyed by the analysis name: a caption, its figures, its tables and its headline numbers."""

    text: str
    figures: Callable[[dict], list[go.Figure]]
    tables: Callable[[dict], dict[str, list[dict]]] = lambda r: {}
    numbers: Callable[[dict], dict] = lambda r: {}


def _curvature_figures(r: dict) -> list[go.Figure]:
    density = any(isinstance(b.get("density"), dict) for _, b, _ in _curvature_blocks(r))
    return (
        [hessian_spectrum(r)]
        + ([spectral_density(r)] if density else [])
        + ([drift_figure(r["drift"])] if r.get("drift") else [])
    )


def _curvature_numbers(r: dict) -> dict:
    """Per model: the spectrum, lambda_1, the coupling and the conditions; the drift's fits and verdict."""
    keys = ("safety_eigenvalues", "lambda_1", "safety_trace", "coupling", "conditions", "stationarity", "taylor")
    out = {m: {k: r[m].get(k) for k in keys} for m in CURVATURE_MODELS if isinstance(r.get(m), dict)}
    out = out or {"safety_eigenvalues": r.get("safety_eigenvalues"), "coupling": r.get("coupling")}
    if r.get("drift"):
        out["drift"] = {k: r["drift"].get(k) for k in ("fits", "verdict", "final_rise", "stationarity", "predicted")}
    return out


FIGURES: dict[str, AnalysisFigures] = {
    "correlate": AnalysisFigures(
        "Pearson r of base vs fine-tuned per-example losses (paper 1, eq. 1); null r: the same r for the base "
        "against the base plus random noise of the fine-tune's per-tensor size.",
        lambda r: [correlation_scatter(r), mean_loss_bars(r)],
        lambda r: {"correlation": correlation_table(r)},
        lambda r: {k: {m: v.get(m) for m in CORRELATION_NUMBERS} for k, v in r.items()},
    ),
    "landscape": AnalysisFigures(
        "Gradient-informed surfaces; structural difference = 100 (1 - r of the interior Laplacians), with the "
        "same-model floor (two sample halves of one model) and a bootstrap interval over grid points.",
        lambda r: [landscape_surfaces(r), cross_section_figure(r)],
        numbers=lambda r: {
            "structural_difference_percent": r["structural_difference"],
            "structural_difference_interval": r.get("structural_difference_interval", {}),
            "structural_difference_floor_percent": r.get("structural_difference_floor", {}),
            "structural_difference_repeats": r.get("structural_difference_repeats", {}),
            "radius": r.get("radius"),
            "radius_fit": r.get("radius_fit"),
            "direction_cosine": r["cosine"],
        },
    ),
    "curvature": AnalysisFigures(
        "Safety-Hessian spectrum, curvature coupling and the alignment-instability conditions on the aligned "
        "base and the fine-tune; the alignment loss under gradient descent with power-law fits.",
        _curvature_figures,
        lambda r: {"conditions": conditions_table(r)},
        _curvature_numbers,
    ),
    "basin": AnalysisFigures(
        "ASR under random weight perturbation along layer-normalised directions, within a range fitted on the "
        "aligned model; VISAGE as Peng et al. code it (mean 100 - ASR inside each line's basin), the plane and "
        "1-D means, and each model's basin radius, with 95% intervals.",
        lambda r: [basin_curves(r), basin_plane(r), visage_bars(r)],
        lambda r: {"basin": basin_table(r)},
        lambda r: {k: {n: v.get(n) for n in BASIN_NUMBERS} for k, v in r.items() if isinstance(v, dict)},
    ),
}
