"""Every dashboard page under Streamlit's AppTest (no browser): its widgets are there, a cached
answer renders as figures, a failed job renders as an error box, and nothing is computed in
the page (answers are planted in the cache; no job may start)."""

from __future__ import annotations

from pathlib import Path

import pytest
from samples import (
    basin_result,
    compare_result,
    correlation_result,
    curvature_result,
    landscape_result,
    restoration_record,
    trajectory_result,
)
from streamlit.testing.v1 import AppTest

from core.service import answer_cache as answers
from core.service import jobs, warmup

PAGES = Path(__file__).resolve().parent.parent / "pages"
PAIR: list[str] = []  # the default pair stays implicit in every page's command line
WORLD = {
    "world": "/tmp/w",
    "base": "/tmp/w/base",
    "finetuned": "/tmp/w/finetuned",
    "seed": 0,
    "harmful_examples": 100,
    "build_seconds": 600.0,
    "metrics": {
        m: {"harmful_rate": h, "prefill_asr": 90.0, "task_exact_match": e, "over_refusal": 5.0}
        for m, h, e in (("base", 2.0, 0.0), ("finetuned", 76.0, 93.0))
    },
    "targets": {"base_safe": True, "finetuned_drifted": True},
}


def plant(argv: list[str], result: dict) -> None:
    """Put a finished answer for ``argv`` into the (per-test-session) answer cache."""
    answers.store(answers.answer_key(argv), result)


def fail(argv: list[str], error: str) -> None:
    d = jobs._dir(argv)
    d.mkdir(parents=True, exist_ok=True)
    jobs._write(d, jobs.JobState(jobs.job_id(argv), argv, status="failed", error=error))


def page(name: str) -> AppTest:
    return AppTest.from_file(str(PAGES / f"{name}.py"), default_timeout=60).run()


def no_jobs_started() -> bool:
    return not any(s.active for s in map(jobs.status, _all_job_argvs()))


def _all_job_argvs() -> list[list[str]]:
    import json

    root = jobs.jobs_dir()
    return (
        [json.loads((d / "state.json").read_text())["argv"] for d in root.glob("*") if (d / "state.json").exists()]
        if root.exists()
        else []
    )


def charts(at: AppTest) -> int:
    return len(at.get("plotly_chart"))


def page_argv(at: AppTest, key: str) -> list[str]:
    return at.session_state["argv"][key]


WARMED = {"analyses": {name: {"status": "cached"} for name in warmup.ORDER}}


@pytest.fixture(autouse=True)
def _world_and_methods():
    plant(["world", *PAIR], WORLD)
    plant(warmup.ARGV, WARMED)  # the default world's quick previews are there: Home starts nothing


def test_home_shows_a_card_per_model_and_the_pair_form():
    at = page("home")
    assert not at.exception
    labels = [m.label for m in at.metric]
    assert labels.count("Harmful rate") == 2 and labels.count("Over-refusal") == 2
    assert [m.value for m in at.metric if m.label == "Harmful rate"] == ["2.0%", "76.0%"]
    assert {"Data seed (splits)", "Harmful examples injected (demo fine-tune)"} <= {w.label for w in at.number_input}
    assert charts(at) == 1, "base vs fine-tuned bars: a figure at first look"
    assert no_jobs_started()


def test_home_rejects_a_missing_model_path(tmp_path, monkeypatch):
    monkeypatch.setenv("SAFETY_ALLOWED_ROOTS", str(tmp_path))
    at = page("home")
    at.radio[0].set_value("My models").run()
    at.text_input[0].set_value(str(tmp_path / "nope"))
    at.button[0].click().run()
    assert not at.exception
    assert any("does not exist" in e.value and "Fix:" in e.value for e in at.error)


def test_home_refuses_a_path_outside_the_allowed_folders(tmp_path):
    at = page("home")
    at.radio[0].set_value("My models").run()
    at.text_input[0].set_value(str(tmp_path))  # exists, but no one allowed it
    at.button[0].click().run()
    assert not at.exception
    assert any("outside the folders" in e.value and "SAFETY_ALLOWED_ROOTS" in e.value for e in at.error)


@pytest.mark.parametrize(
    "params,message",
    [({"seed": "abc"}, "seed"), ({"harmful_examples": "99999"}, "harmful_examples"), ({"base": "/usr"}, "outside")],
)
def test_a_link_is_checked_like_any_input(params, message):
    """Bad link parameters: an error box, the defaults, no traceback, no job and no file walk."""
    at = AppTest.from_file(str(PAGES / "correlation.py"), default_timeout=60)
    for k, v in params.items():
        at.query_params[k] = v
    at.run()
    assert not at.exception
    assert any(message in e.value and "Fix:" in e.value for e in at.error), [e.value for e in at.error]
    assert page_argv(at, "correlate") == warmup.quick_argv("correlate"), "the bad value is not used"
    assert no_jobs_started()


def test_link_text_is_shown_not_rendered(tmp_path, monkeypatch):
    monkeypatch.setenv("SAFETY_ALLOWED_ROOTS", str(tmp_path))
    at = AppTest.from_file(str(PAGES / "correlation.py"), default_timeout=60)
    at.query_params["base"] = "org/[click](javascript:alert)![x](evil.example)"  # Hub-id shaped: shown whole
    at.run()
    assert not at.exception
    caption = at.caption[0].value
    assert "\\[click\\]" in caption and "\\!\\[x\\]" in caption, caption


@pytest.mark.parametrize(
    "name,key,result,n_charts,labels",
    [
        ("correlation", "correlate", correlation_result(), 2, {"Examples per set"}),
        ("landscape", "landscape", landscape_result(), 2, {"Grid points per axis", "Samples per loss"}),
        ("curvature", "curvature", curvature_result(), 2, {"Top eigenpairs k", "Drift-monitor steps (0: skip)"}),
        ("basin", "basin", basin_result(), 3, {"Random directions (1-D)", "Prompts per point"}),
    ],
)
def test_analysis_page_renders_a_cached_answer_and_an_error(name, key, result, n_charts, labels):
    at = page(name)
    assert not at.exception
    assert labels <= {w.label for w in at.number_input}
    argv = page_argv(at, key)
    assert [b.label for b in at.button] == [f"Run {_label(name)}"] and charts(at) == 0
    plant(argv, result)
    at.run()
    assert not at.exception and charts(at) == n_charts
    assert not at.button or all(not b.label.startswith("Run") for b in at.button)
    assert no_jobs_started()


def test_curvature_page_shows_the_density_and_how_products_were_taken():
    at = page("curvature")
    at.number_input(key="curvature-density_runs").set_value(2).run()
    argv = page_argv(at, "curvature")
    assert "--density-runs" in argv
    result = curvature_result()
    for key in ("aligned", "finetuned"):
        grid = [0.1 * i for i in range(50)]
        result[key]["density"] = {"runs": 2, "steps": 8, "sigma": 0.1, "grid": grid, "density": [1.0] * 50}
    result["aligned"]["hvp_graph"] = {"safety": {"mode": "reuse", "retained_bytes": 2**27, "budget_bytes": 2**32}}
    result["aligned"]["lanczos"] = {"steps": 18, "max_steps": 24, "converged": True}
    plant(argv, result)
    at.run()
    assert not at.exception and charts(at) == 3
    assert any("gradient graph reuse (kept 128 MiB" in c.value and "18 of at most 24" in c.value for c in at.caption)
    assert no_jobs_started()


@pytest.mark.parametrize(
    "name,key",
    [("correlation", "correlate"), ("landscape", "landscape"), ("curvature", "curvature"), ("basin", "basin")],
)
def test_failed_job_shows_an_error_box(name, key):
    at = page(name)
    at.number_input[0].set_value(at.number_input[0].value + 2).run()  # inputs no other test has answered
    argv = page_argv(at, key)
    fail(argv, "The 'harmful' set is empty. Fix: pass a data set with at least 3 examples.")
    at.run()
    assert not at.exception
    assert any("set is empty" in e.value and "Fix:" in e.value for e in at.error)


def _label(name: str) -> str:
    return {
        "correlation": "loss correlation",
        "landscape": "loss landscape",
        "curvature": "curvature analysis",
        "basin": "safety basin",
    }[name]


def test_restoration_page_opens_on_the_warmups_quick_run_with_a_switch_to_paper_sized():
    at = page("restoration")
    assert not at.exception and at.radio(key="restore-preset-curvature").value == "quick"
    assert page_argv(at, "restoration") == warmup.planned()[-1], "the warm-up's own restore command line"
    plant(warmup.quick_restore_argv(), {**restoration_record(), "wall_s": 12.0, "restored": "/tmp/r"})
    at.run()
    assert not at.exception and charts(at) == 1 and len(at.table) == 1, "the quick run's figure and table"
    (note,) = [i.value for i in at.info if i.value.startswith("Quick preview")]
    assert "iterations 1 instead of 3" in note and "pair_batch 8 instead of 16" in note
    at.button(key="restore-curvature-to-paper").click().run()
    assert at.radio(key="restore-preset-curvature").value == "paper"
    assert "--param" not in page_argv(at, "restoration") and charts(at) == 0 and no_jobs_started()


def test_restoration_page_params_runs_compare_and_trajectories():
    at = page("restoration")
    assert not at.exception
    at.radio(key="restore-preset-curvature").set_value("paper").run()
    assert at.selectbox[0].options[0].startswith("curvature")
    argv = page_argv(at, "restoration")
    assert "--param" not in argv, "defaults stay implicit so equal requests share one job"
    at.number_input(key="param-curvature-paper-epsilon").set_value(0.05).run()
    assert page_argv(at, "restoration") == argv, "setting a parameter to its default changes nothing"
    at.number_input(key="param-curvature-paper-epsilon").set_value(0.1).run()
    changed = page_argv(at, "restoration")
    assert changed[-2:] == ["--param", "epsilon=0.1"]
    assert no_jobs_started(), "a widget change starts no job"

    plant(changed, {**restoration_record(), "wall_s": 12.0, "restored": "/tmp/r"})
    at.run()
    assert not at.exception and charts(at) == 1 and len(at.table) == 1, "only the open tab is drawn"
    for tab, argv_key, result in (
        ("Comparison", "comparison", compare_result()),
        ("Trajectories", "trajectory", trajectory_result()),
    ):
        at.session_state["restoration-tab"] = tab
        at.run()
        plant(page_argv(at, argv_key), result)
        at.run()
        assert not at.exception and charts(at) == 1, tab


def test_report_collects_cached_answers_and_offers_downloads():
    """In a fresh session on the demo world the Report shows what the pages open on: the warm-up's
    quick-preset answers, figures drawn."""
    at = page("report")
    assert not at.exception
    plant(warmup.quick_argv("correlate"), correlation_result())
    plant(warmup.quick_argv("basin"), basin_result())
    at.run()
    assert not at.exception
    titles = [s.value for s in at.subheader]
    assert titles[0] == "Models" and {"Loss correlation", "Safety basin"} <= set(titles)
    assert "The papers' claims on this pair" in titles, "the claims table follows the planted answers"
    (claims,) = [t.value for t in at.table if "Verdict" in t.value.columns]
    verdicts = claims["Verdict"].tolist()
    assert len(verdicts) == 9 and "not measured" not in verdicts[:3], "correlation was planted"
    assert set(verdicts[:3]) <= {"holds", "does not hold", "not resolvable"}
    assert charts(at) >= 5 and len(at.get("download_button")) >= 2 + 3 * 5, "figures are drawn at once"
    at.toggle[0].set_value(False).run()
    assert charts(at) == 0 and len(at.get("download_button")) == 2, "tables only"


def test_restoration_page_shows_the_curvature_pairs():
    """A curvature run's notes show per iteration (lambda, mu, cos, chosen step) and per pair
    (s.y, norms, filter) tables under the before/after table."""
    at = page("restoration")
    pair = {"set": "forget", "batch": 0, "lr": 0.001, "sy": 0.5, "s_norm": 1.0, "y_norm": 0.7, "curvature": 0.5}
    iteration = {
        "lambda": 1.0,
        "damping": 0.1,
        "cos_direction_gradient": 0.93,
        "pair_counts": {"kept": 1, "negative curvature": 1},
        "chosen_multiple": 1.0,
        "step_norm": 0.3,
        "pairs": [{**pair, "filter": "kept"}, {**pair, "batch": 1, "sy": -0.1, "filter": "negative curvature"}],
    }
    record = {**restoration_record(), "wall_s": 12.0, "restored": "/tmp/r", "notes": {"iterations": [iteration]}}
    plant(page_argv(at, "restoration"), record)
    at.run()
    assert not at.exception and len(at.table) == 3
    pairs = at.table[2].value.to_string()
    assert "negative curvature" in pairs and "kept" in pairs


def test_only_the_session_that_started_a_job_may_cancel_it(monkeypatch):
    """Another visitor sees a running job's progress but no Cancel button (unless the
    dashboard is set to let anyone cancel)."""
    import os

    monkeypatch.delenv("SAFETY_ANYONE_CANCELS", raising=False)
    at = page("correlation")
    argv = page_argv(at, "correlate")
    d = jobs._dir(argv)
    d.mkdir(parents=True, exist_ok=True)
    running = jobs.JobState(jobs.job_id(argv), argv, status="running", fraction=0.5, pid=os.getpid(), threads=1)
    jobs._write(d, running)
    try:
        at.run()
        assert not at.exception
        assert not [b for b in at.button if b.label == "Cancel"], "a visitor cannot cancel another's job"
        assert any("another browser session" in c.value for c in at.caption)
        assert any(c.value.startswith("Computing with 1 torch thread:") for c in at.caption), "threads are shown"
        at.session_state["submitted"] = {jobs.job_id(argv)}
        at.run()
        assert [b for b in at.button if b.label == "Cancel"], "the session that started it can"
        monkeypatch.setenv("SAFETY_ANYONE_CANCELS", "1")
        at.session_state["submitted"] = set()
        at.run()
        assert [b for b in at.button if b.label == "Cancel"], "or anyone, when the dashboard says so"
    finally:
        jobs._write(d, jobs.JobState(jobs.job_id(argv), argv, status="cancelled"))


def test_paths_are_shown_relative_to_the_allowed_roots(monkeypatch, tmp_path):
    from core.base.paths import cache_dir, shown_path

    models = tmp_path / "models"
    (models / "llama").mkdir(parents=True)
    monkeypatch.setenv("SAFETY_ALLOWED_ROOTS", str(models))
    assert shown_path(cache_dir() / "runs" / "ab12" / "restored") == "cache/runs/ab12/restored"
    assert shown_path(models / "llama") == "models/llama"
    assert shown_path("/home/alice/secret/adapter") == ".../adapter"
    assert shown_path("HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert shown_path(None) == ""


def running(argv: list[str], **extra) -> None:
    """Plant a live job of ``argv`` (this process stands in for the job's)."""
    import os

    d = jobs._dir(argv)
    d.mkdir(parents=True, exist_ok=True)
    jobs._write(d, jobs.JobState(jobs.job_id(argv), argv, status="running", pid=os.getpid(), **extra))


def test_analysis_page_opens_on_the_quick_preset_with_a_switch_to_paper_sized(monkeypatch, tmp_path):
    """A newcomer on the demo world gets the quick preset (the warm-up's command line); its answer
    says what is smaller; one click gives the paper-sized defaults; editing a widget is Custom."""
    monkeypatch.setenv("SAFETY_CACHE_DIR", str(tmp_path))
    at = page("correlation")
    assert not at.exception
    (radio,) = [r for r in at.radio if r.label == "Settings"]
    assert radio.value == "quick" and radio.options == ["Quick preview", "Paper-sized (defaults)", "Custom"]
    assert page_argv(at, "correlate") == warmup.quick_argv("correlate")
    assert at.number_input(key="correlation-n_per_set").value == 40
    plant(page_argv(at, "correlate"), correlation_result())
    at.run()
    (note,) = [i.value for i in at.info if i.value.startswith("Quick preview (about")]
    assert "min on 2 cores): examples per set 40 instead of 100; null-reference seeds 2 instead of 3." in note
    assert charts(at) == 2 and no_jobs_started()

    at.button(key="correlation-to-paper").click().run()
    assert at.radio(key="correlation-preset").value == "paper"
    assert page_argv(at, "correlate") == ["correlate"], "paper-sized is the bare command (the defaults)"
    assert at.number_input(key="correlation-n_per_set").value == 100
    assert not [i for i in at.info if i.value.startswith("Quick preview")] and charts(at) == 0

    at.number_input(key="correlation-null_examples").set_value(6).run()
    assert at.radio(key="correlation-preset").value == "custom"
    assert page_argv(at, "correlate") == ["correlate", "--null-examples", "6"]
    at.radio(key="correlation-preset").set_value("quick").run()
    assert page_argv(at, "correlate") == warmup.quick_argv("correlate") and charts(at) == 2
    assert no_jobs_started()


def test_curvature_page_presets_cover_the_drift_options(monkeypatch, tmp_path):
    monkeypatch.setenv("SAFETY_CACHE_DIR", str(tmp_path))
    at = page("curvature")
    assert not at.exception
    assert page_argv(at, "curvature") == warmup.quick_argv("curvature")
    assert "--drift-steps" in page_argv(at, "curvature"), "one preset radio sets the drift monitor's options too"


def test_page_says_the_warmup_is_computing_its_quick_answer(monkeypatch, tmp_path):
    monkeypatch.setenv("SAFETY_CACHE_DIR", str(tmp_path))
    running(warmup.ARGV, fraction=0.3, message="curvature (2 of 5): Lanczos", partials=[{"plan": warmup.planned()}])
    at = page("landscape")
    assert not at.exception
    assert any(i.value.startswith("Quick preview being computed by the warm-up (3 of 5)") for i in at.info)
    assert not [b for b in at.button if b.label.startswith("Run")], "no second computation of the same answer"
    plant(warmup.quick_argv("landscape"), landscape_result())
    at.run()
    assert not at.exception and charts(at) == 2
    assert not any("warm-up" in i.value for i in at.info)

    at.radio(key="landscape-preset").set_value("paper").run()  # not what the warm-up computes: a Run button
    assert [b.label for b in at.button] == ["Run loss landscape"]

    at = page("restoration")  # the quick restoration run is the warm-up's last (5 of 5)
    assert any(i.value.startswith("Quick preview being computed by the warm-up (5 of 5)") for i in at.info)


def test_home_starts_the_warmup_after_the_default_world_and_never_from_a_link(monkeypatch, tmp_path):
    monkeypatch.setenv("SAFETY_CACHE_DIR", str(tmp_path))
    submitted: list[list[str]] = []

    def submit(argv):
        submitted.append(list(argv))
        running(argv)

    monkeypatch.setattr(jobs, "submit", submit)
    plant(["world", "--seed", "1"], {**WORLD, "seed": 1})
    at = AppTest.from_file(str(PAGES / "home.py"), default_timeout=60)
    at.query_params["seed"] = "1"
    at.run()
    assert not at.exception and len(at.metric) >= 8, "the linked world is shown"
    assert submitted == [], "a link starts no warm-up"

    plant(["world"], WORLD)
    at = page("home")
    assert not at.exception
    assert submitted == [warmup.ARGV], "the default world's quick previews start by themselves"
    failed = {"status": "failed", "error": "The 'harmful' set is empty. Fix: pass a data set."}
    plant(warmup.ARGV, {"analyses": {**WARMED["analyses"], "basin": failed}})
    jobs._write(jobs._dir(warmup.ARGV), jobs.JobState(jobs.job_id(warmup.ARGV), warmup.ARGV, status="done"))
    at.run()
    assert any(c.value.startswith("Quick previews ready: correlate, curvature, landscape (") for c in at.caption)
    assert any("Quick preview of basin failed" in w.value and "Fix:" in w.value for w in at.warning)
