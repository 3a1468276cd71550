"""End to end in a real browser: the dashboard served by ``streamlit run``, driven by the system
Chromium through Playwright. A deep link as the server's first request runs under app.py's
navigation; every page renders; a tiny model pair is chosen on Home; a short
curvature job runs in the background with live progress, then shows its table; a figure's PNG
download is a 3840x2160 PNG. The cache is the per-session tmp dir (no demo world is touched).

``serve`` and ``launch`` are shared with ``bench/pages.py``.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator
from urllib.parse import quote

import pytest
from playwright.sync_api import Browser, Page, Playwright, expect, sync_playwright

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = os.environ.get("BROWSER_PATH") or "/usr/bin/chromium"
START_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 15.0
PAGE_TIMEOUT_MS = 30_000
JOB_TIMEOUT_S = 240.0
DOWNLOAD_TIMEOUT_MS = 150_000
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PAGES = {  # sidebar link (URL path) -> the page's title
    "": "Safety drift lab",
    "correlation": "Loss correlation",
    "landscape": "Loss landscape",
    "curvature": "Curvature",
    "basin": "Safety basin",
    "restoration": "Restoration",
    "report": "Report",
}
# Curvature with the smallest settings: ~30-60 s on the tiny model on 2 busy cores.
CURVATURE_INPUTS = {
    "Top eigenpairs k": 1,
    "Examples in each loss": 1,
    "Drift-monitor steps (0: skip)": 2,
    "Probe every (steps)": 1,
}
CURVATURE_ARGS = "--k 1 --samples 1 --drift-steps 2 --every 1"  # only values that differ from the defaults


# ---------------------------------------------------------------------------- the server
def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def _job_dirs(cache: Path) -> set[Path]:
    return set((cache / "jobs").glob("*")) if (cache / "jobs").is_dir() else set()


def _stop_jobs(dirs: set[Path]) -> None:
    """Stop the still-running job processes of ``dirs`` (each job leads its own session)."""
    for d in dirs:
        try:
            state = json.loads((d / "state.json").read_text())
        except (OSError, ValueError):
            continue
        if state.get("status") in ("starting", "running") and state.get("pid"):
            try:
                os.killpg(state["pid"], signal.SIGTERM)
            except OSError:
                pass


@contextmanager
def serve(cache: Path, log_path: Path, stop_jobs: bool = True, allowed: str = "") -> Iterator[str]:
    """Run ``streamlit run app.py`` on a free 127.0.0.1 port with ``cache`` as the cache root;
    yield its URL once healthy. Always stops it; with ``stop_jobs`` also the background jobs that
    appeared in ``cache`` meanwhile (only safe where nothing else uses that cache)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "SAFETY_CACHE_DIR": str(cache), "HF_HUB_OFFLINE": "1", "SAFETY_ALLOWED_ROOTS": allowed}
    before = _job_dirs(cache)
    cmd = [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        "app.py",
        "--server.address",
        "127.0.0.1",
        "--server.port",
        str(port),
        "--server.headless",
        "true",
        "--browser.gatherUsageStats",
        "false",
    ]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            cmd,
            cwd=PROJECT_ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _healthy(url):
            if proc.poll() is not None:
                raise RuntimeError(
                    f"streamlit exited with {proc.returncode}:\n{log_path.read_text(errors='replace')[-3000:]}"
                )
            if time.monotonic() > deadline:
                tail = log_path.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"streamlit not healthy after {START_TIMEOUT_S:.0f} s:\n{tail}")
            time.sleep(0.3)
        yield url
    finally:
        if stop_jobs:
            _stop_jobs(_job_dirs(cache) - before)
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(STOP_TIMEOUT_S)
        except ProcessLookupError:
            pass


def launch(playwright: Playwright) -> Browser:
    """The system Chromium, headless (Playwright downloads no browser here). Every request that is
    not to 127.0.0.1 goes to a dead proxy and fails: the browser reaches nothing outside this
    machine. (Chromium does this itself; routing each request through Playwright's Python side
    made page loads several times slower.)"""
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"no Chromium at {CHROMIUM}: apt-get install chromium (or set BROWSER_PATH)")
    return playwright.chromium.launch(
        executable_path=CHROMIUM,
        headless=True,
        args=["--proxy-server=http://127.0.0.1:9", "--proxy-bypass-list=127.0.0.1"],
    )


def png_size(data: bytes) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk; raises AssertionError if ``data`` is no PNG."""
    assert data[:8] == PNG_SIGNATURE, f"not a PNG: starts {data[:8]!r}"
    assert data[12:16] == b"IHDR", "PNG without IHDR first"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


# ---------------------------------------------------------------------------- the test
def _open(page: Page, path: str, caption: str) -> None:
    """Click the sidebar link to ``path``; its title and the pair caption render, no exception box."""
    page.locator(f'[data-testid="stSidebarNav"] a[href$="/{path}"]').click()
    expect(page.locator("h1")).to_have_text(PAGES[path], timeout=PAGE_TIMEOUT_MS)
    expect(page.get_by_text(caption)).to_be_visible(timeout=PAGE_TIMEOUT_MS)
    assert page.locator('[data-testid="stException"]').count() == 0, (
        f"exception on /{path}: {page.locator('[data-testid=stException]').first.inner_text()}"
    )


def _watch_job(page: Page) -> list[str]:
    """The distinct progress texts seen until the curvature table shows (bounded by JOB_TIMEOUT_S)."""
    bar, table = page.locator('[data-testid="stProgress"]'), page.locator('[data-testid="stTable"]')
    seen: list[str] = []
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while table.count() == 0:
        assert time.monotonic() < deadline, f"no result table after {JOB_TIMEOUT_S:.0f} s; progress seen: {seen}"
        failed = page.get_by_text("curvature analysis failed")
        assert failed.count() == 0, failed.first.inner_text()
        for text in bar.all_inner_texts():
            if text and (not seen or seen[-1] != text):
                seen.append(text)
        page.wait_for_timeout(500)
    return seen


def test_dashboard_end_to_end(tiny_model_dir, tiny_adapter_dir, session_cache_dir, tmp_path):
    base, adapter = str(tiny_model_dir), str(tiny_adapter_dir)
    caption = " → ".join(f"{Path(p).parent.name}/{Path(p).name}" for p in (base, adapter))  # relative to the roots
    allowed = os.pathsep.join(str(Path(p).parent) for p in (base, adapter))  # the tiny pair lives in tmp folders
    with serve(session_cache_dir, tmp_path / "streamlit.log", allowed=allowed) as url, sync_playwright() as pw:
        browser = launch(pw)
        try:
            context = browser.new_context(viewport={"width": 1400, "height": 900}, accept_downloads=True)
            page = context.new_page()
            # The server's first request is a page URL: the page must still run under app.py's navigation.
            page.goto(f"{url}/report", timeout=PAGE_TIMEOUT_MS)
            expect(page.locator("h1")).to_have_text(PAGES["report"], timeout=PAGE_TIMEOUT_MS)
            expect(page.locator('[data-testid="stSidebarNav"] a')).to_have_count(len(PAGES), timeout=PAGE_TIMEOUT_MS)
            expect(page.get_by_text("Presentation mode")).to_be_visible(timeout=PAGE_TIMEOUT_MS)
            # Home with only the base in the URL ("My models", so no demo world is built); the form sets the pair.
            page.goto(f"{url}/?base={quote(base, safe='')}", timeout=PAGE_TIMEOUT_MS)
            expect(page.locator("h1")).to_have_text(PAGES[""], timeout=PAGE_TIMEOUT_MS)
            expect(page.get_by_label("Base (aligned) model", exact=False)).to_have_value(base, timeout=PAGE_TIMEOUT_MS)
            page.get_by_label("Fine-tuned: PEFT adapter", exact=False).fill(adapter)
            page.get_by_role("button", name="Use this pair").click()
            expect(page.get_by_text(caption)).to_be_visible(timeout=PAGE_TIMEOUT_MS)
            assert page.locator('[data-testid="stException"]').count() == 0

            for path in ("correlation", "landscape", "basin", "restoration", "report", "", "curvature"):
                _open(page, path, caption)

            custom = page.get_by_role("radio", name="Custom")
            for label, value in CURVATURE_INPUTS.items():
                field = page.get_by_label(label, exact=True)
                field.fill(str(value))
                field.press("Enter")
                expect(field).to_have_value(str(value), timeout=PAGE_TIMEOUT_MS)
                # wait for the edit's rerun (Settings reads Custom): an edit sent before it carries the radio's
                # old value, which Streamlit reports as a radio change that reapplies the old preset
                expect(custom).to_be_checked(timeout=PAGE_TIMEOUT_MS)
            expect(page.get_by_text(CURVATURE_ARGS)).to_be_visible(timeout=PAGE_TIMEOUT_MS)
            page.get_by_role("button", name="Run curvature analysis").click()

            seen = _watch_job(page)
            percents = [int(m.group(1)) for t in seen if (m := re.search(r"(\d+)%", t))]
            assert len(seen) >= 2 and max(percents) > percents[0], f"no live progress change: {seen}"
            expect(page.locator('[data-testid="stMetric"]').filter(has_text="λ₁ (safety)")).to_be_visible(
                timeout=PAGE_TIMEOUT_MS
            )
            assert page.locator('[data-testid="stException"]').count() == 0

            png_button = page.locator('[data-testid="stDownloadButton"]').filter(has_text="PNG").first
            with page.expect_download(timeout=DOWNLOAD_TIMEOUT_MS) as download:
                png_button.click()
            assert download.value.suggested_filename == "hessian-spectrum.png"
            assert png_size(Path(download.value.path()).read_bytes()) == (3840, 2160)
        finally:
            browser.close()
