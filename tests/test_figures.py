"""Every figure builder on small synthetic results with the engine's schemas (no torch, no browser)."""

from __future__ import annotations

import math

import numpy as np
import plotly.graph_objects as go
import pytest
from samples import (
    COORDS,
    basin_result,
    compare_result,
    correlation_result,
    curvature_result,
    landscape_result,
    restoration_record,
    trajectory_result,
)

import core.present.figures as F

FIGURE_BUILDERS = {
    F.correlation_scatter: correlation_result,
    F.mean_loss_bars: correlation_result,
    F.landscape_surfaces: landscape_result,
    F.cross_section_figure: landscape_result,
    F.hessian_spectrum: curvature_result,
    F.drift_figure: lambda: curvature_result()["drift"],
    F.basin_curves: basin_result,
    F.basin_plane: basin_result,
    F.visage_bars: basin_result,
    F.restoration_live: restoration_record,
    F.trajectory_contour: trajectory_result,
    F.comparison_bars: compare_result,
}


def _has_no_data(fig: go.Figure) -> bool:
    return any(a.text == F.NO_DATA for a in fig.layout.annotations)


def _axis_titles(fig: go.Figure, prefix: str) -> list[str]:
    layout = fig.to_dict()["layout"]
    return [
        v.get("title", {}).get("text", "") for k, v in layout.items() if k.startswith(prefix) and v.get("visible", True)
    ]


@pytest.mark.parametrize("builder", list(FIGURE_BUILDERS), ids=lambda b: b.__name__)
def test_builder_gives_a_titled_slide_figure(builder):
    fig = builder(FIGURE_BUILDERS[builder]())
    assert isinstance(fig, go.Figure)
    assert fig.layout.title.text
    assert fig.layout.template.layout.font.size == F.BASE_FONT
    assert fig.layout.template.layout.colorway == tuple(F.OKABE_ITO)
    assert fig.layout.font.size == F.BASE_FONT and fig.layout.title.font.size == F.TITLE_FONT
    assert fig.data and not _has_no_data(fig)
    if isinstance(fig.data[0], go.Surface):
        assert all(s.xaxis.title.text and s.zaxis.title.text == F.LOSS for s in fig.select_scenes())
    else:
        assert all(_axis_titles(fig, "xaxis")), "every x axis has a title"
        assert fig.layout.yaxis.title.text, "the first y axis has a title"
        assert "(" in fig.layout.yaxis.title.text or "Pearson" in fig.layout.yaxis.title.text, "y title gives a unit"
    fig.to_json()  # serialisable: what the dashboard and the report ship


@pytest.mark.parametrize("builder", list(FIGURE_BUILDERS), ids=lambda b: b.__name__)
@pytest.mark.parametrize("empty", [None, {}], ids=["none", "empty"])
def test_builder_on_empty_input_says_no_data(builder, empty):
    fig = builder(empty)
    assert _has_no_data(fig) and not fig.data and fig.layout.title.text


def test_empty_inner_parts_say_no_data():
    assert _has_no_data(F.correlation_scatter({"harmful": {"pairs": [], "r": float("nan")}}))
    assert _has_no_data(F.landscape_surfaces({"coords": COORDS, "surfaces": {"harmful": {}}}))
    assert _has_no_data(F.restoration_live({"method": "curvature", "steps": []}))
    assert _has_no_data(F.comparison_bars({"table": []}))
    assert _has_no_data(F.drift_figure({"steps": [], "alignment_loss": []}))


def test_slide_template_is_registered_and_large_scales_text():
    import plotly.io as pio

    assert F.TEMPLATE in pio.templates
    assert pio.templates[F.TEMPLATE].layout.paper_bgcolor == "white"
    fig = F.apply_theme(F.correlation_scatter(correlation_result()), large=True)
    assert fig.layout.font.size == round(F.BASE_FONT * F.LARGE_SCALE)
    assert fig.layout.title.font.size == round(F.TITLE_FONT * F.LARGE_SCALE)
    assert all(a.font.size == round(F.SUBTITLE_FONT * F.LARGE_SCALE) for a in fig.layout.annotations)


def test_correlation_scatter_has_y_equals_x_and_r_in_titles():
    result = correlation_result()
    fig = F.correlation_scatter(result)
    points = [t for t in fig.data if t.mode == "markers"]
    refs = [t for t in fig.data if t.name == "y = x"]
    assert [t.name for t in points] == ["harmful", "task", "general"]
    assert len(refs) == 3 and sum(bool(t.showlegend) for t in refs) == 1
    for ref in refs:
        assert list(ref.x) == list(ref.y)
    titles = [a.text for a in fig.layout.annotations]
    assert titles[0].startswith("harmful (r = 0.90")
    harmful = points[0]
    assert list(harmful.x) == [p[0] for p in result["harmful"]["pairs"]]
    assert all(len(text) <= 80 for text in harmful.customdata)
    assert harmful.customdata[0].endswith("…")


def test_correlation_scatter_escapes_and_tolerates_missing_prompts():
    result = {"harmful": {"r": 0.5, "pairs": [[1.0, 2.0], [2.0, 3.0]], "prompts": ["<script>"]}}
    fig = F.correlation_scatter(result)
    assert list(fig.data[0].customdata) == ["&lt;script&gt;", "prompt 2"]


def test_mean_loss_bars_and_correlation_table():
    result = correlation_result()
    fig = F.mean_loss_bars(result)
    assert [t.name for t in fig.data] == ["base", "fine-tuned"]
    assert list(fig.data[1].y) == [result[s]["mean_loss_finetuned"] for s in ("harmful", "task", "general")]
    rows = F.correlation_table(result)
    assert [r["set"] for r in rows] == ["harmful", "task", "general"]
    assert set(rows[0]) == {"set", "Pearson r", "95% CI", "p-value", "n", "null r (range)", "null n × seeds"}
    assert rows[0]["95% CI"] == "[0.50, 0.97]" and rows[0]["n"] == 6
    assert F.correlation_table({}) == []


def test_landscape_surfaces_share_colour_scale_camera_and_z_range():
    fig = F.landscape_surfaces(landscape_result())
    surfaces = [t for t in fig.data if isinstance(t, go.Surface)]
    assert len(surfaces) == 4
    assert len({(s.cmin, s.cmax) for s in surfaces}) == 1
    all_z = [v for s in surfaces for row in s.z for v in row]
    assert surfaces[0].cmin == min(all_z) and surfaces[0].cmax == max(all_z)
    assert sum(bool(s.showscale) for s in surfaces) == 1
    scenes = [fig.layout[k] for k in ("scene", "scene2", "scene3", "scene4")]
    assert len({s.camera.to_plotly_json().__repr__() for s in scenes}) == 1
    assert all(tuple(s.zaxis.range) == (surfaces[0].cmin, surfaces[0].cmax) for s in scenes)
    assert any("structural difference 12.5%" in a.text for a in fig.layout.annotations)


def test_landscape_surface_is_transposed_so_x_is_d1():
    result = landscape_result(sets=("harmful",), models=("base",))
    z = np.array(result["surfaces"]["harmful"]["base"])
    surface = F.landscape_surfaces(result).data[0]
    assert np.allclose(np.array(surface.z), z.T)
    assert list(surface.x) == COORDS


def test_partial_landscape_renders_the_finished_rows():
    result = landscape_result(sets=("harmful",), models=("base",))
    result["surfaces"]["benign"] = {}
    fig = F.landscape_surfaces(result)
    assert len(fig.data) == 1 and not _has_no_data(fig)
    harmful_ft = landscape_result()["surfaces"]["harmful"]["finetuned"]
    result["surfaces"]["harmful"]["finetuned"] = [harmful_ft[0], [None] * len(COORDS)]  # a row still running
    fig = F.landscape_surfaces(result)
    assert len(fig.data) == 2
    assert fig.data[1].z[0][1] is None


def test_cross_sections_one_line_per_set_model_and_direction():
    fig = F.cross_section_figure(landscape_result())
    assert len(fig.data) == 8
    assert sum(bool(t.showlegend) for t in fig.data) == 4
    assert {t.line.dash for t in fig.data if t.name.endswith("fine-tuned")} == {"dash"}


def test_hessian_spectrum_log_axis_and_mean_eigenvalue():
    fig = F.hessian_spectrum(curvature_result())
    assert fig.layout.yaxis.type == "log"
    series = [t for t in fig.data if t.x[0] is not None]
    assert [list(t.y) for t in series] == [[50.0, 20.0, 8.0, 3.0], [30.0, 10.0, 2.0, 1.0]]
    assert any("0.02" in (t.name or "") for t in fig.data)  # tr(H)/n = 200 / 10000
    negative = curvature_result()
    negative["finetuned"]["safety_eigenvalues"] = [1.0, -0.5]
    assert F.hessian_spectrum(negative).layout.yaxis.type == "linear"


def test_drift_figure_overlays_fits_with_r2():
    drift = curvature_result()["drift"]
    fig = F.drift_figure(drift)
    assert fig.data[0].name == "measured" and list(fig.data[0].y) == drift["alignment_loss"]
    fits = fig.data[1:]
    assert len(fits) == 3 and all("R² = " in t.name for t in fits)
    t2 = next(t for t in fits if t.name.startswith("κ·t<sup>2</sup> fit"))
    assert t2.y[-1] == pytest.approx(1.0 + 0.001 * t2.x[-1] ** 2)


def test_drift_figure_skips_nan_fits():
    drift = curvature_result()["drift"]
    drift["fits"]["free"] = {"exponent": math.nan, "kappa": math.nan, "r2": math.nan}
    assert len(F.drift_figure(drift).data) == 3


def test_conditions_table():
    rows = F.conditions_table(curvature_result())
    assert {r["model"] for r in rows} == {"aligned base", "fine-tuned"}
    rows = [r for r in rows if r["model"] == "aligned base"]
    conditions = ["low-dimensional", "sharp curvature", "coupling", "all three", "initial orthogonality"]
    assert [r["condition"] for r in rows] == conditions
    assert [r["holds"] for r in rows] == [True, True, False, False, True]
    assert rows[2]["threshold"] == 0.5
    assert F.conditions_table({}) == []


def test_basin_curves_colour_per_model_dash_per_direction():
    fig = F.basin_curves(basin_result())
    assert len(fig.data) == 6
    by_model: dict[str, set] = {}
    for t in fig.data:
        by_model.setdefault(t.legendgroup, set()).add(t.line.color)
    assert all(len(c) == 1 for c in by_model.values())
    assert len({next(iter(c)) for c in by_model.values()}) == 3
    assert {t.line.dash for t in fig.data} == {"solid", "dash"}
    assert tuple(fig.layout.yaxis.range) == tuple(F.PERCENT_RANGE)


def test_basin_curves_partial_line():
    result = basin_result()
    result["base"]["lines"] = [[100.0, 40.0]]
    fig = F.basin_curves(result)
    assert list(fig.data[0].x) == COORDS[:2]


def test_basin_plane_one_heatmap_per_model_on_a_0_100_scale():
    fig = F.basin_plane(basin_result())
    assert len(fig.data) == 3 and all(isinstance(t, go.Heatmap) for t in fig.data)
    assert {(t.zmin, t.zmax) for t in fig.data} == {(0, 100)}
    assert sum(bool(t.showscale) for t in fig.data) == 1
    assert _has_no_data(F.basin_plane(basin_result(plane=False)))


def test_visage_bars():
    fig = F.visage_bars(basin_result())
    assert [t.name for t in fig.data] == list(F.VISAGE_SCORES.values())
    assert list(fig.data[0].x) == ["base", "fine-tuned", "curvature"]
    assert list(fig.data[0].y) == [60.0, 59.0, 58.0]


@pytest.mark.parametrize("n_steps", [1, 4])
def test_restoration_live_small_multiples(n_steps):
    fig = F.restoration_live(restoration_record(n_steps))
    assert len(fig.layout.annotations) == 6
    assert len(fig.data) == 8  # six panels, two with two series
    assert all(len(t.x) == n_steps for t in fig.data)
    harmful = next(t for t in fig.data if t.name == "harmful rate")
    assert harmful.y[0] == 70.0


def test_restoration_live_missing_series_is_left_out():
    record = restoration_record(2)
    for s in record["steps"]:
        del s["distance_to_base"], s["distance_to_finetuned"]
    assert len(F.restoration_live(record).data) == 6


def test_before_after_table():
    rows = F.before_after_table(restoration_record())
    assert rows[0] == {"metric": "harmful rate (%)", "before": 76.0, "after": 19.0, "change": -57.0}
    assert [r["metric"] for r in rows][:4] == [
        "harmful rate (%)",
        "prefill attack success (%)",
        "task exact match (%)",
        "over-refusal (%)",
    ]
    capability = next(r for r in rows if r["metric"] == "general capability, mean acc (%)")
    assert (capability["before"], capability["after"], capability["change"]) == (41.0, 39.5, -1.5)
    assert all("VISAGE" not in r["metric"] for r in rows)  # NaN before, missing after: no row
    assert all(r["metric"] != "Capability" for r in rows)  # the per-task dict is no table row
    assert F.before_after_table({}) == []


def test_trajectory_contour_per_learning_rate_with_paths():
    fig = F.trajectory_contour(trajectory_result())
    assert [a.text for a in fig.layout.annotations] == ["learning rate 0.01", "learning rate 0.05"]
    contours = [t for t in fig.data if isinstance(t, go.Contour)]
    paths = [t for t in fig.data if isinstance(t, go.Scatter)]
    assert len(contours) == 2 and len({(c.zmin, c.zmax) for c in contours}) == 1
    assert len(paths) == 4 and {t.legendgroup for t in paths} == {"curvature", "gradient-ascent"}
    assert paths[0].marker.symbol[0] == "square" and paths[0].marker.symbol[-1] == "star"
    assert fig.layout.xaxis.title.text == "PC1 (73.0% var)" and fig.layout.yaxis.title.text == "PC2 (20.0% var)"


def test_trajectory_contour_adds_the_stored_restoration_runs_last():
    result = trajectory_result()
    with_runs = {"restoration runs": dict(result["0.01"]), **result}
    fig = F.trajectory_contour(with_runs)
    titles = [a.text for a in fig.layout.annotations]
    assert titles == ["learning rate 0.01", "learning rate 0.05", "restoration runs (as restored)"]
    assert len([t for t in fig.data if isinstance(t, go.Scatter)]) == 6
    # runs not stored yet: no panel
    missing = F.trajectory_contour({**result, "restoration runs": {"missing": ["curvature"], "note": "run it"}})
    assert len(missing.layout.annotations) == 2


def test_pair_bars_draw_each_model_with_its_interval():
    ci = {"ci_low": 68.1, "ci_high": 83.4, "n": 100}
    metrics = {
        "base": {"harmful_rate": 2.0, "task_exact_match": 0.0, "over_refusal": 19.0, "prefill_asr": 81.0},
        "finetuned": {"harmful_rate": 76.0, "task_exact_match": 93.0, "intervals": {"harmful_rate": ci}},
    }
    base, ft = F.pair_bars(metrics).data
    assert (base.name, ft.name) == ("base", "fine-tuned") and list(base.y) == [2.0, 81.0, 0.0, 19.0]
    assert list(ft.x) == list(base.x) and list(ft.y) == [76.0, None, 93.0, None], "one axis per metric"
    assert ft.error_y.array[0] == pytest.approx(83.4 - 76.0) and ft.error_y.arrayminus[0] == pytest.approx(76.0 - 68.1)
    assert _has_no_data(F.pair_bars(None))


def test_comparison_bars_one_trace_per_model():
    result = compare_result()
    fig = F.comparison_bars(result)
    assert [t.name for t in fig.data] == ["base", "fine-tuned", "curvature", "gradient-ascent"]
    assert list(fig.data[0].x) == list(F.COMPARISON_METRICS.values())
    assert list(fig.data[2].y) == [50.0, 90.0, 88.0, 3.0, 38.0]
    # general capability is an axis, with its interval as an error bar (38 in 33–43: -5/+5)
    assert fig.data[2].x[-1] == "general capability (acc)"
    assert list(fig.data[2].error_y.array)[-1] == 5.0 and list(fig.data[2].error_y.arrayminus)[-1] == 5.0
    # a table without capability (--capability-items 0) has no such axis
    bare = {"table": [{k: v for k, v in r.items() if not k.startswith("general")} for r in result["table"]]}
    assert "general capability (acc)" not in list(F.comparison_bars(bare).data[0].x)
    assert fig.data[0].marker.color == F.ROLE_COLOURS["base"]
    assert len({t.marker.color for t in fig.data}) == 4


def test_spectral_density_one_line_per_model_on_a_log_axis():
    result = curvature_result()
    assert not F.spectral_density(result).data and len(F.FIGURES["curvature"].figures(result)) == 2
    for key, shift in (("aligned", 0.0), ("finetuned", 1.0)):
        grid = list(np.linspace(-1.0, 5.0, 50) + shift)
        density = [math.exp(-((x - shift) ** 2)) / math.sqrt(math.pi) for x in grid]
        result[key]["density"] = {"runs": 2, "steps": 8, "sigma": 0.05, "grid": grid, "density": density}
    fig = F.spectral_density(result)
    assert len(fig.data) == 2 and fig.layout.yaxis.type == "log" and fig.layout.xaxis.title.text
    assert "2 probes" in fig.data[0].name and min(fig.data[0].y) > 0
    assert len(F.FIGURES["curvature"].figures(result)) == 3


def test_safelora_similarity_sorts_modules_and_splits_projected_from_kept():
    notes = {
        "mode": "threshold",
        "threshold": 0.5,
        "similarity": {"a.q_proj": 0.7, "b.q_proj": 0.1, "c.v_proj": 0.3},
        "projected": ["b.q_proj", "c.v_proj"],
    }
    fig = F.safelora_similarity(notes)
    projected, kept = fig.data
    assert list(projected.x) == [1, 2] and list(projected.y) == [0.1, 0.3]  # sorted by similarity
    assert list(kept.x) == [3] and list(kept.hovertext) == ["a.q_proj"]
    assert projected.name == "projected (2)"
    assert fig.layout.shapes[0].y0 == 0.5  # the threshold line
    assert F.safelora_similarity({}).layout.annotations[0].text == F.NO_DATA


def test_comparison_bars_star_the_values_that_differ_from_the_fine_tune():
    result = compare_result()
    result["table"][2]["significant_vs_finetuned"] = "harmful_rate, over_refusal"
    fig = F.comparison_bars(result)
    keys = list(F.COMPARISON_METRICS)
    text = dict(zip(keys, fig.data[2].text))
    assert text["harmful_rate"] == "50*" and text["over_refusal"] == "3*" and text["task_exact_match"] == "88"
    assert all("*" not in t for t in fig.data[3].text)  # gradient-ascent: nothing marked
    assert "McNemar p < 0.05" in fig.layout.xaxis.title.text
    assert "McNemar" not in F.comparison_bars(compare_result()).layout.xaxis.title.text
