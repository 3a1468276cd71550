"""Page speed of the dashboard in a real browser (the system Chromium through Playwright), on the
demo world in the project cache.

1. Prepare (skip with --no-prepare): each page is opened once with its default settings; when it
   offers "Run ..." instead of an answer, the bench clicks it and waits up to --prepare-timeout s
   (then cancels the job; the page is measured without an answer). The pages of CHEAP, whose
   defaults take from minutes to hours on 2 cores, are run with their defaults only with
   --prepare-defaults (else their default answers count if already cached), and always once with
   the cheap settings of CHEAP (up to --cheap-timeout s). Answers stay cached until core/ changes.
2. Cold tab: for every page, --reps fresh browser contexts; the time from navigation to the
   page's main content (first metric card, table or drawn plotly chart; "Run" button when its
   answer is not cached), target < 3 s; and to every chart drawn.
3. Widget change: the "Presentation mode" toggle (no analysis input) flipped on and off; the time
   until the rerun ends and every chart is redrawn. No job may start (job folders compared before
   and after; the exit status is 1 if one did). A missed target is printed as SLOW.
4. Cheap settings: on the pages of CHEAP, the time from the last settings change to the cached
   answer rendered.

Run: .venv/bin/python bench/pages.py [--reps N] [--no-prepare]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from playwright.sync_api import Page, sync_playwright
from playwright.sync_api import TimeoutError as PlaywrightTimeoutError  # noqa: E402

from core.base.paths import cache_dir  # noqa: E402
from core.service.jobs import ACTIVE  # noqa: E402
from tests.test_browser import PAGES, launch, serve  # noqa: E402

TARGET_S = 3.0
NAV_TIMEOUT_MS = 60_000
POLL_MS = 50
VIEWPORT = {"width": 1600, "height": 1000}
ANSWER = '[data-testid="stMetric"]:visible, [data-testid="stTable"]:visible, .js-plotly-plot .main-svg:visible'
RUN_BUTTON = '[data-testid="stMain"] button:has-text("Run "):visible'
PROGRESS = '[data-testid="stMain"] [data-testid="stProgress"]:visible'
MESSAGE = '[data-testid="stMain"] [data-testid="stAlert"]:visible'
IDLE = '[data-testid="stApp"][data-test-script-state="notRunning"]'
MESSAGE_GRACE_S = 2.0
CHEAP: dict[str, dict[str, int | str]] = {  # page -> sidebar inputs that make its analysis cheap (minutes)
    "landscape": {"Grid points per axis": 5, "Samples per loss": 2},
    # the Hessian of one LoRA matrix in the last of SmolLM2-135M's 30 layers: backward stops there
    "curvature": {
        "Top eigenpairs k": 1,
        "Examples in each loss": 1,
        "Parameters": "layers.29.self_attn.v_proj.lora",
        "Drift-monitor steps (0: skip)": 2,
        "Probe every (steps)": 1,
    },
    "basin": {
        "Random directions (1-D)": 1,
        "Points per line (odd)": 3,
        "Plane points per axis (odd, 0: none)": 0,
        "Prompts per point": 2,
    },
}
# Script state and chart count, read in the page: the rerun has ended and every chart is drawn.
SETTLED_JS = """() => {
  const app = document.querySelector('[data-testid="stApp"]');
  const charts = document.querySelectorAll('[data-testid="stPlotlyChart"]').length;
  const drawn = document.querySelectorAll('[data-testid="stPlotlyChart"] .js-plotly-plot .main-svg').length;
  return app && app.dataset.testScriptState === 'notRunning' && drawn >= charts;
}"""
WATCH_JS = """() => {
  const app = document.querySelector('[data-testid="stApp"]');
  window.__ran = false;
  new MutationObserver(records => {
    if (records.some(r => r.oldValue === 'running') || app.dataset.testScriptState === 'running') window.__ran = true;
  }).observe(app, {attributes: true, attributeOldValue: true, attributeFilter: ['data-test-script-state']});
}"""


def jobs_snapshot() -> dict[str, tuple]:
    """Every job folder of the project cache: (status, last update, command line)."""
    out = {}
    for d in sorted((cache_dir() / "jobs").glob("*")):
        try:
            state = json.loads((d / "state.json").read_text())
        except (OSError, ValueError):
            state = {}
        out[d.name] = (state.get("status"), state.get("updated"), " ".join(state.get("argv", []))[:80])
    return out


def jobs_started(before: dict[str, tuple], after: dict[str, tuple]) -> list[str]:
    """Command lines of the jobs started between two snapshots (a new folder, or a job that was
    not active before and was written since); a job that was already running and ends is not."""
    return [v[2] for k, v in after.items() if k not in before or (before[k][0] not in ACTIVE and before[k][1] != v[1])]


def wait_state(page: Page, timeout_s: float) -> tuple[str, float]:
    """Wait for the page's main content: 'answer', 'running' (a job's progress), 'run' (a "Run"
    button: no cached answer) or 'message' (an alert and nothing else, e.g. nothing to report),
    with the perf_counter time it showed. An alert counts only if no answer follows within
    MESSAGE_GRACE_S (a page streams its alert before its lazily loaded tables and charts)."""
    deadline, message_at = time.monotonic() + timeout_s, None
    while time.monotonic() < deadline:
        now = time.perf_counter()
        if page.locator(ANSWER).count():
            return "answer", now
        if page.locator(PROGRESS).count():
            return "running", now
        if page.locator(IDLE).count():
            if page.locator(RUN_BUTTON).count():
                return "run", now
            if page.locator(MESSAGE).count():
                message_at = message_at or now
                if now - message_at > MESSAGE_GRACE_S:
                    return "message", message_at
        page.wait_for_timeout(POLL_MS)
    raise TimeoutError(f"no main content after {timeout_s:.0f} s on {page.url}")


def settled(page: Page, timeout_s: float) -> None:
    page.wait_for_function(SETTLED_JS, timeout=timeout_s * 1000, polling=POLL_MS)


def open_page(context, url: str, path: str) -> Page:
    page = context.new_page()
    page.goto(f"{url}/{path}", timeout=NAV_TIMEOUT_MS)
    page.locator("h1").filter(has_text=PAGES[path]).wait_for(timeout=NAV_TIMEOUT_MS)
    return page


def commit(page: Page, label: str, value: int | str, settle: bool = True) -> float:
    """Type ``value`` into the sidebar input ``label`` and press Enter; wait for the rerun
    to start (and, with ``settle``, to end). Returns the perf_counter time of the key press."""
    field = page.get_by_label(label, exact=True)
    field.fill(str(value))
    page.evaluate(WATCH_JS)
    t0 = time.perf_counter()
    field.press("Enter")
    page.wait_for_function("() => window.__ran", timeout=NAV_TIMEOUT_MS, polling=POLL_MS)
    if settle:
        page.locator(IDLE).wait_for(timeout=NAV_TIMEOUT_MS)
    return t0


def set_inputs(page: Page, values: dict[str, int | str]) -> None:
    """Set each sidebar input that differs (each change is one rerun)."""
    for label, value in values.items():
        if page.get_by_label(label, exact=True).input_value() != str(value):
            commit(page, label, value)


def run_to_answer(page: Page, timeout_s: float) -> str:
    """Start the page's visible analyses until it shows an answer (a page may need two, as
    Restoration: the method list, then the run); past ``timeout_s`` cancel the job it runs."""
    deadline, clicks, ran, outcome = time.monotonic() + timeout_s, 0, False, None
    try:
        while time.monotonic() < deadline:
            state, _ = wait_state(page, NAV_TIMEOUT_MS / 1000)
            ran = ran or state == "running"
            if state in ("answer", "message"):
                outcome = "computed" if clicks or ran else "cached"
                return outcome
            if state == "run" and clicks < 3:
                page.locator(RUN_BUTTON).first.click()
                clicks += 1
            page.wait_for_timeout(1000)
        return f"not finished in {timeout_s:.0f} s (cancelled)"
    finally:
        cancel = page.locator('[data-testid="stMain"] button:has-text("Cancel"):visible')
        if outcome is None and cancel.count():
            cancel.first.click()
            page.wait_for_timeout(2000)


def prepare(browser, url: str, args: argparse.Namespace) -> dict[str, str]:
    """Step 1 of the module docstring; returns what was cached or computed, per page."""
    notes = {}
    for path in PAGES:
        context = browser.new_context(viewport=VIEWPORT)
        try:
            page = open_page(context, url, path)
            t = time.monotonic()
            if path in CHEAP and not args.prepare_defaults:
                notes[path] = "defaults " + {"answer": "cached"}.get(
                    wait_state(page, NAV_TIMEOUT_MS / 1000)[0], "not cached"
                )
            else:
                notes[path] = run_to_answer(page, args.prepare_timeout)
            if path in CHEAP:
                set_inputs(page, CHEAP[path])
                notes[path] += f"; cheap settings: {run_to_answer(page, args.cheap_timeout)}"
            print(f"prepared /{path or ''}: {notes[path]} ({time.monotonic() - t:.0f} s)", flush=True)
        finally:
            context.close()
    return notes


def cold(browser, url: str, path: str, context: Any = None) -> tuple[float, float, str, Page, Any]:
    """One cold tab: seconds to main content and to every chart drawn, what was shown; the page stays open.

    Without ``context`` the tab opens in a fresh browser context (empty HTTP cache: a first visit);
    with one, it is a new tab of a browser that already has the dashboard's scripts cached."""
    context = context or browser.new_context(viewport=VIEWPORT)
    page = context.new_page()
    t0 = time.perf_counter()
    page.goto(f"{url}/{path}", timeout=NAV_TIMEOUT_MS)
    page.locator("h1").filter(has_text=PAGES[path]).wait_for(timeout=NAV_TIMEOUT_MS)
    shown, at = wait_state(page, NAV_TIMEOUT_MS / 1000)
    settled(page, NAV_TIMEOUT_MS / 1000)
    main = at - t0
    return main, time.perf_counter() - t0, shown, page, context


def toggle_presentation(page: Page) -> float:
    """Seconds from a click on "Presentation mode" until the rerun ended and every chart is redrawn."""
    page.evaluate(WATCH_JS)
    toggle = page.get_by_text("Presentation mode", exact=True)
    t0 = time.perf_counter()
    toggle.click()
    page.wait_for_function("() => window.__ran", timeout=NAV_TIMEOUT_MS, polling=POLL_MS)
    settled(page, NAV_TIMEOUT_MS / 1000)
    return time.perf_counter() - t0


def cheap_render(browser, url: str, path: str) -> tuple[float, str]:
    """Seconds from the last cheap-settings change to the page's main content."""
    context = browser.new_context(viewport=VIEWPORT)
    try:
        page = open_page(context, url, path)
        wait_state(page, NAV_TIMEOUT_MS / 1000)
        items = list(CHEAP[path].items())
        set_inputs(page, dict(items[:-1]))
        t0 = commit(page, *items[-1], settle=False)
        shown, at = wait_state(page, NAV_TIMEOUT_MS / 1000)
        return at - t0, shown
    finally:
        context.close()


def measure(browser, url: str, path: str, reps: int) -> dict[str, Any]:
    """Cold-tab medians of one page, then the widget change in the last tab (with its job check)."""
    mains, fulls = [], []
    for rep in range(reps):
        main_s, full_s, shown, page, context = cold(browser, url, path)
        mains.append(main_s)
        fulls.append(full_s)
        if rep < reps - 1:
            context.close()
    try:
        before = jobs_snapshot()
        widget = [toggle_presentation(page), toggle_presentation(page)]
        page.wait_for_timeout(1000)
        started = jobs_started(before, jobs_snapshot())
        tabs = []
        for _ in range(reps):
            tab_main, tab_full, _, tab, _ = cold(browser, url, path, context)
            tabs.append((tab_main, tab_full))
            tab.close()
    finally:
        context.close()
    return {
        "main": statistics.median(mains),
        "full": statistics.median(fulls),
        "shown": shown,
        "widget": widget,
        "started": started,
        "tab_main": statistics.median(t[0] for t in tabs),
        "tab_full": statistics.median(t[1] for t in tabs),
    }


def _try_cheap(browser, url: str, path: str) -> tuple[float, str]:
    """``cheap_render``, with a timed-out page reported instead of ending the bench."""
    try:
        return cheap_render(browser, url, path)
    except PlaywrightTimeoutError as err:
        return float("nan"), f"timed out: {str(err).splitlines()[0]}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=3, help="cold tabs per page (default 3; the median is printed)")
    ap.add_argument(
        "--no-prepare",
        action="store_true",
        help="use whatever is cached; start no analysis (Home still builds/loads the world, as on any visit)",
    )
    ap.add_argument(
        "--prepare-defaults",
        action="store_true",
        help="also run landscape, curvature and basin with their (slow) defaults",
    )
    ap.add_argument(
        "--prepare-timeout",
        type=float,
        default=120.0,
        help="seconds an analysis with page defaults may take (default 120)",
    )
    ap.add_argument(
        "--cheap-timeout",
        type=float,
        default=600.0,
        help="seconds an analysis with cheap settings may take (default 600)",
    )
    args = ap.parse_args()
    log = Path(tempfile.mkdtemp(prefix="bench-pages-")) / "streamlit.log"
    load_before = os.getloadavg()[0]
    with serve(cache_dir(), log, stop_jobs=False) as url, sync_playwright() as pw:
        browser = launch(pw)
        try:
            notes = {} if args.no_prepare else prepare(browser, url, args)
            load_measure = os.getloadavg()[0]
            rows = {path: measure(browser, url, path, args.reps) for path in PAGES}
            cheap = {path: _try_cheap(browser, url, path) for path in CHEAP}
        finally:
            browser.close()
    print(
        f"\nPage speed on {os.cpu_count()} cores (1-min load average {load_before:.1f} at start, "
        f"{load_measure:.1f} when measuring, {os.getloadavg()[0]:.1f} at end)."
    )
    print(
        f"Cold tab: median of {args.reps} fresh browser contexts, navigation to main content "
        f"(target < {TARGET_S:.0f} s) and to every chart drawn;"
    )
    print("new tab: the same, in a new tab of that browser (its HTTP cache holds the dashboard's scripts);")
    print(
        "widget: the Presentation-mode toggle on, then off (no analysis input), "
        "until the rerun ends and every chart is redrawn."
    )
    failures = 0
    for path, r in rows.items():
        failures += bool(r["started"])
        jobs = "no job started" if not r["started"] else f"JOB STARTED: {r['started']}"
        note = f" · prepared: {notes[path]}" if path in notes else ""
        verdict = "OK" if r["main"] < TARGET_S else "SLOW"
        print(
            f"/{path:<12} {r['main']:5.2f} s main ({r['shown']}) · {r['full']:5.2f} s all charts · "
            f"target < {TARGET_S:.0f} s {verdict} · "
            f"new tab {r['tab_main']:.2f} s / {r['tab_full']:.2f} s · "
            f"widget {r['widget'][0]:.2f} s / {r['widget'][1]:.2f} s · {jobs}{note}"
        )
    for path, (seconds, shown) in cheap.items():
        print(
            f"/{path:<12} {seconds:5.2f} s from the last cheap-settings change to main content "
            f"({shown}) · {CHEAP[path]}"
        )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
