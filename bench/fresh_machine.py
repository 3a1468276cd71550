"""A newcomer's first hour, timed: from a fresh clone to a dashboard that shows a figure on every
page (issue 14, item 7).

1. clone the committed HEAD into a temporary folder (``git clone --local``: what a newcomer checks out);
2. install: ``make install`` there (a new virtual environment, packages from the registries);
3. dashboard: the clone's ``streamlit run app.py`` as ``make run`` starts it (a free port), until
   its health check answers: **time to a usable dashboard** = install + start;
4. open Home in the system Chromium and keep the tab open, as a person would: Home builds the
   demo world as a background job (**time to a built world**), then starts the warm-up that
   computes every page's quick preview;
5. when the warm-up is done (or ``--timeout`` passes), open every page in a fresh tab and wait for a
   drawn Plotly chart: **time to every page showing a figure**.

The clone has its own empty ``cache/``: nothing comes from this project's cache. Run it on an idle
machine (the load average is printed at each step):

    .venv/bin/python bench/fresh_machine.py                 # ~30 min on 2 cores
    .venv/bin/python bench/fresh_machine.py --keep /tmp/fm  # keep the clone (and its venv) afterwards
    .venv/bin/python bench/fresh_machine.py --keep /tmp/fm --install-only   # then the same without
    # --install-only: the install measured alone, the rest later from the kept clone
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from playwright.sync_api import sync_playwright  # noqa: E402

from tests.test_browser import PAGES, _healthy, free_port, launch  # noqa: E402

CHART = ".js-plotly-plot .main-svg"
POLL_S = 5.0


def step(log: dict, name: str, t0: float) -> float:
    elapsed = time.perf_counter() - t0
    log[name] = {"s": round(elapsed, 1), "load": round(os.getloadavg()[0], 2)}
    print(f"{name}: {elapsed / 60:.1f} min (load {os.getloadavg()[0]:.2f})", flush=True)
    return elapsed


def job_states(cache: Path) -> dict[str, dict]:
    """The clone's background jobs by command (``world``, ``warmup``, ...): their last state."""
    out = {}
    for f in (cache / "jobs").glob("*/state.json"):
        try:
            state = json.loads(f.read_text())
        except (OSError, ValueError):
            continue
        out[state["argv"][0]] = state
    return out


def wait_job(cache: Path, command: str, deadline: float) -> dict | None:
    while time.monotonic() < deadline:
        state = job_states(cache).get(command)
        if state and state["status"] in ("done", "failed", "cancelled"):
            return state
        time.sleep(POLL_S)
    return None


def figures(url: str, browser) -> dict[str, bool]:
    """Each page in a fresh tab: does it draw a Plotly chart within a minute?"""
    shown = {}
    for path in PAGES:
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        page.goto(f"{url}/{path}")
        try:
            page.wait_for_selector(CHART, state="visible", timeout=60_000)
            shown[path or "home"] = True
        except Exception:  # noqa: BLE001  (a page without a chart is what this records)
            shown[path or "home"] = False
        page.close()
    return shown


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--keep", type=Path, help="clone into this (new) folder and keep it")
    ap.add_argument("--install-only", action="store_true", help="with --keep: clone and install, then stop")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds to wait for world and warm-up")
    args = ap.parse_args()
    if args.install_only and not args.keep:
        raise SystemExit("--install-only needs --keep DIR (the later run continues from it)")
    work = args.keep or Path(tempfile.mkdtemp(prefix="fresh-machine-"))
    work.mkdir(parents=True, exist_ok=True)
    clone = work / "clone"
    log: dict = {"load_at_start": os.getloadavg()[0], "cores": os.cpu_count()}
    t0 = time.perf_counter()
    installed = work / "install.json"
    if installed.exists():  # --keep DIR from an --install-only run: its measured install time counts
        log["install"] = json.loads(installed.read_text())
        t0 -= log["install"]["s"]
        print(f"install (from {installed}): {log['install']['s'] / 60:.1f} min", flush=True)
    else:
        subprocess.run(["git", "clone", "--quiet", "--local", str(ROOT), str(clone)], check=True)
        subprocess.run(["make", "install"], cwd=clone, check=True, stdout=subprocess.DEVNULL)
        step(log, "install", t0)
        if args.install_only:
            installed.write_text(json.dumps(log["install"]))
            return
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAFETY_")}
    server = subprocess.Popen(
        [str(clone / ".venv/bin/streamlit"), "run", "app.py", "--server.port", str(port)],
        cwd=clone,
        env={**env, "HF_HUB_OFFLINE": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        while not _healthy(url):
            time.sleep(0.2)
        step(log, "usable_dashboard", t0)
        deadline = time.monotonic() + args.timeout
        with sync_playwright() as pw:
            browser = launch(pw)
            home = browser.new_page()
            home.goto(url)  # the person opens Home and leaves the tab open
            world = wait_job(clone / "cache", "world", deadline)
            step(log, "built_world", t0)
            log["world_status"] = world and world["status"]
            warm = wait_job(clone / "cache", "warmup", deadline)
            step(log, "warm_up_done", t0)
            log["warmup_status"] = warm and warm["status"]
            log["pages_with_a_figure"] = figures(url, browser)
            step(log, "every_page_showing_a_figure", t0)
            browser.close()
    finally:
        os.killpg(server.pid, 15)
        for state in job_states(clone / "cache").values():
            if state["status"] in ("starting", "queued", "running") and state.get("pid"):
                try:
                    os.killpg(state["pid"], 15)
                except OSError:
                    pass
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(log))


if __name__ == "__main__":
    main()
