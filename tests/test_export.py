"""Static export through kaleido + the system Chromium, and the one-file HTML / JSON reports."""

from __future__ import annotations

import json
import math
import os
import struct

import plotly.graph_objects as go
import pytest
from plotly.offline import get_plotlyjs

import core.present.export as export
from core.base.errors import InputError
from core.present.export import Section, figure_bytes, report_html, report_json
from core.present.figures import comparison_bars, correlation_scatter, no_data


def _browser_available() -> bool:
    try:
        export.browser_path()
    except InputError:
        return False
    return True


needs_browser = pytest.mark.skipif(
    not _browser_available(),
    reason="no Chromium at $BROWSER_PATH/$CHROMIUM_PATH or /usr/bin/chromium (apt-get install chromium)",
)


@pytest.fixture(scope="module")
def figure() -> go.Figure:
    return correlation_scatter(
        {"harmful": {"r": 0.8, "pairs": [[1.0, 1.5], [2.0, 2.2], [0.5, 0.9]], "prompts": ["a", "b", "c"]}}
    )


@pytest.fixture(scope="module", autouse=True)
def _close_browser_afterwards():
    yield
    export.close_browser()


@needs_browser
def test_png_is_3840_by_2160(figure):
    data = figure_bytes(figure, "png")
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert data[12:16] == b"IHDR"
    assert struct.unpack(">II", data[16:24]) == (3840, 2160)


@needs_browser
def test_svg_and_pdf(figure):
    svg = figure_bytes(figure, "svg")
    assert svg.lstrip().startswith((b"<svg", b"<?xml"))
    assert b'width="1920"' in svg and b'height="1080"' in svg
    assert figure_bytes(figure, "PDF").startswith(b"%PDF")


@needs_browser
def test_the_browser_stays_warm_between_exports(figure):
    figure_bytes(figure, "svg")
    first = export._browser
    figure_bytes(no_data("empty"), "svg")
    assert first is not None and export._browser is first
    export.close_browser()
    assert export._browser is None


def test_unknown_format_is_an_input_error(figure):
    with pytest.raises(InputError, match="png, svg, pdf"):
        figure_bytes(figure, "gif")


def test_missing_browser_names_the_fix(figure, monkeypatch, tmp_path):
    monkeypatch.setenv("BROWSER_PATH", str(tmp_path / "no-such-chromium"))
    with pytest.raises(InputError) as err:
        figure_bytes(figure, "png")
    assert "no-such-chromium" in str(err.value) and "apt-get install chromium" in err.value.fix


def test_browser_path_order(monkeypatch, tmp_path):
    exe = tmp_path / "chrome"
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    monkeypatch.delenv("BROWSER_PATH", raising=False)
    monkeypatch.setenv("CHROMIUM_PATH", str(exe))
    assert export.browser_path() == str(exe)
    monkeypatch.setenv("BROWSER_PATH", str(exe))
    monkeypatch.setenv("CHROMIUM_PATH", "/nowhere")
    assert export.browser_path() == str(exe)
    assert os.access(exe, os.X_OK)


def _sections(figure: go.Figure) -> list[Section]:
    compare = {
        "table": [
            {"model": "base", "harmful_rate": 70.0, "prefill_asr": 90.0, "task_exact_match": 91.0, "over_refusal": 1.0}
        ]
    }
    return [
        Section(
            "Loss correlation",
            "Base vs fine-tuned.\n\nSecond <paragraph>.",
            [figure],
            {"r per set": [{"set": "harmful", "r": 0.8, "ok": True}]},
            {"r": 0.8},
        ),
        Section(
            "Comparison",
            figures=[comparison_bars(compare)],
            tables={"methods": compare["table"]},
            numbers={"nan": math.nan, "nested": {"x": [1, 2]}},
        ),
        Section("Empty section"),
    ]


def test_report_html_is_self_contained(figure):
    page = report_html("Safety report", _sections(figure))
    assert page.startswith("<!DOCTYPE html>")
    assert page.count(get_plotlyjs()[:500]) == 1, "plotly.js inlined exactly once"
    assert "<script src=" not in page and "cdn.plot.ly/plotly" not in page.replace(get_plotlyjs(), "")
    for title in ("Safety report", "Loss correlation", "Comparison", "Empty section"):
        assert f">{title}</h" in page
    assert page.count('class="figure"') == 2 and page.count("Plotly.newPlot") == 2
    assert "<caption>r per set</caption>" in page and "<td>yes</td>" in page
    assert "Second &lt;paragraph&gt;." in page


def test_report_json_round_trips(figure):
    sections = _sections(figure)
    data = json.loads(report_json(sections))
    assert [s["title"] for s in data["sections"]] == ["Loss correlation", "Comparison", "Empty section"]
    assert data["sections"][0]["tables"]["r per set"] == [{"set": "harmful", "r": 0.8, "ok": True}]
    assert data["sections"][1]["numbers"] == {"nan": None, "nested": {"x": [1, 2]}}
    assert json.loads(report_json([])) == {"sections": []}


def test_tables_are_written_for_people():
    from core.present.text import readable

    rows = readable([{"model": "curvature", "harmful_rate": 19.0, "wall_s": 504.33, "r": 0.99441, "p": float("nan")}])
    assert rows == [
        {"Model": "curvature", "Harmful rate (%)": "19.0", "Wall time (s)": "504.3", "R": "0.994", "P": "n/a"}
    ]
