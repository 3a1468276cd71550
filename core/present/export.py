"""Figure export (PNG/SVG/PDF via kaleido and headless Chromium) and one-file HTML/JSON reports.

Kaleido 1.x renders in a Chrome it drives through ``choreographer``. It is given the browser
path explicitly (``Kaleido(path=...)``): ``$BROWSER_PATH``, else ``$CHROMIUM_PATH``, else
``/usr/bin/chromium``; nothing is ever downloaded. Starting Chromium takes seconds, so one
browser is kept open on a private event-loop thread and reused by every export (closed at
exit or by ``close_browser``). MathJax is disabled: it would be fetched from a CDN.

Nothing here writes to disk: exports return bytes, reports return strings.
"""

from __future__ import annotations

import asyncio
import atexit
import html
import json
import math
import os
import threading
from dataclasses import dataclass, field
from typing import Any, Coroutine

import plotly.graph_objects as go
import plotly.io as pio
from plotly.offline import get_plotlyjs

from core.base.errors import InputError
from core.present.text import readable

DEFAULT_BROWSER = "/usr/bin/chromium"
BROWSER_FIX = "apt-get install chromium, or set BROWSER_PATH to a Chrome/Chromium executable."
FORMATS = ("png", "svg", "pdf")
WIDTH, HEIGHT, PNG_SCALE = 1920, 1080, 2
START_TIMEOUT_S, RENDER_TIMEOUT_S = 60.0, 90.0


# ---------------------------------------------------------------------------- static images
def browser_path() -> str:
    """The Chromium kaleido drives: ``$BROWSER_PATH``, ``$CHROMIUM_PATH`` or /usr/bin/chromium."""
    path = os.environ.get("BROWSER_PATH") or os.environ.get("CHROMIUM_PATH") or DEFAULT_BROWSER
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        raise InputError(f"No Chromium browser at {path} for the figure export.", BROWSER_FIX)
    return path


class _Browser:
    """One kaleido-driven Chromium on its own event-loop thread, reused across exports."""

    def __init__(self, path: str):
        import kaleido  # loaded on the first export only: it starts a browser

        self.path = path
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="kaleido-export", daemon=True)
        self.thread.start()
        self.kaleido: Any = None

        async def start() -> Any:
            k = kaleido.Kaleido(path=path, mathjax=False, timeout=RENDER_TIMEOUT_S)
            await k.open()
            return k

        try:
            self.kaleido = self._run(start(), START_TIMEOUT_S)
        except Exception as err:
            self.close()
            raise InputError(
                f"Chromium at {path} did not start for the figure export ({type(err).__name__}: {err}).",
                f"check that '{path} --headless --version' runs; {BROWSER_FIX}",
            ) from err

    def _run(self, coro: Coroutine, timeout: float) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def render(self, fig: go.Figure | dict, opts: dict[str, Any]) -> bytes:
        return self._run(self.kaleido.calc_fig(fig, opts=opts), RENDER_TIMEOUT_S + 10)

    def close(self) -> None:
        try:
            if self.kaleido is not None:
                self._run(self.kaleido.close(), 20)
        except Exception:  # noqa: BLE001 - best effort: the browser may already be gone
            pass
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(5)


_browser: _Browser | None = None
_lock = threading.Lock()


def _warm_browser(path: str) -> _Browser:
    global _browser
    if _browser is not None and _browser.path != path:
        _close_locked()
    if _browser is None:
        _browser = _Browser(path)
    return _browser


def _close_locked() -> None:
    global _browser
    if _browser is not None:
        _browser.close()
        _browser = None


def close_browser() -> None:
    """Close the warm export browser (the next export starts a new one)."""
    with _lock:
        _close_locked()


atexit.register(close_browser)


def image_options(fmt: str) -> dict[str, Any]:
    """Kaleido layout options: 1920 x 1080 for all formats, PNG at scale 2 (3840 x 2160 pixels)."""
    fmt = str(fmt).lower().lstrip(".")
    if fmt not in FORMATS:
        raise InputError(f"Unknown figure format '{fmt}'.", f"use one of {', '.join(FORMATS)}.")
    return {"format": fmt, "width": WIDTH, "height": HEIGHT, "scale": PNG_SCALE if fmt == "png" else 1}


def figure_bytes(fig: go.Figure | dict, fmt: str = "png") -> bytes:
    """The figure as PNG, SVG or PDF bytes, rendered by the warm headless Chromium.

    A failed render is retried once in a fresh browser (the old one may have crashed).
    """
    opts = image_options(fmt)
    path = browser_path()
    with _lock:
        try:
            return _warm_browser(path).render(fig, opts)
        except InputError:
            raise
        except Exception:  # noqa: BLE001 - retried once below; a second failure propagates
            _close_locked()
        return _warm_browser(path).render(fig, opts)


# ---------------------------------------------------------------------------- reports
@dataclass
class Section:
    """One part of a report: heading, prose, interactive figures, tables (name -> rows), numbers."""

    title: str
    text: str = ""
    figures: list[go.Figure] = field(default_factory=list)
    tables: dict[str, list[dict]] = field(default_factory=dict)
    numbers: dict[str, Any] = field(default_factory=dict)


STYLE = (
    "\n"
    "body { font-family: Helvetica, Arial, sans-serif; font-size: 17px; color: #222; max-width: 1400px; "
    "margin: 2em auto; padding: 0 1.5em; }\n"
    "h1 { font-size: 2em; } h2 { font-size: 1.5em; border-bottom: 1px solid #ddd; padding-bottom: .2em; "
    "margin-top: 2em; }\n"
    "table { border-collapse: collapse; margin: .5em 0 1.5em; } "
    "caption { text-align: left; font-weight: bold; padding: .3em 0; }\n"
    "th, td { border: 1px solid #ddd; padding: .35em .7em; text-align: left; } th { background: #f4f4f4; }\n"
    "td.num { text-align: right; font-variant-numeric: tabular-nums; } "
    "pre { background: #f7f7f7; padding: 1em; overflow-x: auto; }\n"
    ".figure { margin: 1em 0; }\n"
)


def report_html(title: str, sections: list[Section]) -> str:
    """One self-contained HTML page: plotly.js inlined once, then every section in order."""
    body = "\n".join(_section_html(s, i) for i, s in enumerate(sections))
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(title)}</title>\n<style>{STYLE}</style>\n"
        f'<script type="text/javascript">{get_plotlyjs()}</script>\n</head>\n<body>\n'
        f"<h1>{html.escape(title)}</h1>\n{body}\n</body>\n</html>\n"
    )


def _section_html(section: Section, index: int) -> str:
    parts = [f'<section id="section-{index + 1}">', f"<h2>{html.escape(section.title)}</h2>"]
    parts += [f"<p>{html.escape(p.strip())}</p>" for p in section.text.split("\n\n") if p.strip()]
    parts += [_figure_html(fig) for fig in section.figures]
    parts += [_table_html(name, readable(rows)) for name, rows in section.tables.items()]
    if section.numbers:
        numbers = html.escape(json.dumps(_jsonable(section.numbers), indent=2))
        parts.append(f"<details><summary>Numbers</summary><pre>{numbers}</pre></details>")
    parts.append("</section>")
    return "\n".join(parts)


def _figure_html(fig: go.Figure) -> str:
    div = pio.to_html(
        fig,
        include_plotlyjs=False,
        include_mathjax=False,
        full_html=False,
        default_width="100%",
        default_height="640px",
        config={"displaylogo": False, "responsive": True},
    )
    return f'<div class="figure">{div}</div>'


def _table_html(name: str, rows: list[dict]) -> str:
    columns = list(dict.fromkeys(k for row in rows for k in row))
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in columns)
    body = "".join("<tr>" + "".join(_cell_html(row.get(c)) for c in columns) + "</tr>" for row in rows)
    return f"<table><caption>{html.escape(name)}</caption><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _cell_html(value: Any) -> str:
    if isinstance(value, bool):
        return f"<td>{'yes' if value else 'no'}</td>"
    if isinstance(value, (int, float)):
        text = f"{value:.4g}" if isinstance(value, float) and math.isfinite(value) else str(value)
        return f'<td class="num">{html.escape(text)}</td>'
    return f"<td>{'' if value is None else html.escape(str(value))}</td>"


def report_json(sections: list[Section]) -> str:
    """The report's numbers and tables as strict JSON (NaN and infinities become null)."""
    data = {
        "sections": [{"title": s.title, "text": s.text, "tables": s.tables, "numbers": s.numbers} for s in sections]
    }
    return json.dumps(_jsonable(data), indent=2, allow_nan=False)


def _jsonable(value: Any) -> Any:
    """Plain JSON types: numpy scalars/arrays to Python, non-finite floats to None."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "tolist"):
        return _jsonable(value.tolist())
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, (str, int, bool)):
        return value
    return str(value)


__all__ = ["Section", "browser_path", "close_browser", "figure_bytes", "image_options", "report_html", "report_json"]
