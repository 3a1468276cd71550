"""Background jobs: a command line runs in its own process, identical requests share it, progress
and partial results reach the state file, a cancel stops it cleanly, a failure is one line."""

from __future__ import annotations

import time

from core.service import answer_cache as answers
from core.service import jobs


def _wait(argv: list[str], timeout: float = 240.0, until=lambda s: not s.active) -> jobs.JobState:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = jobs.status(argv)
        if until(state):
            return state
        time.sleep(0.5)
    raise AssertionError(f"job {argv} still {jobs.status(argv).status} after {timeout} s")


def _pair(base, adapter) -> list[str]:
    return ["--base", str(base), "--finetuned", str(adapter), "--threads", "1"]


def test_job_runs_in_background_and_a_second_submit_joins_it(tiny_model_dir, tiny_adapter_dir):
    argv = ["correlate", *_pair(tiny_model_dir, tiny_adapter_dir), "--n", "4"]
    assert jobs.status(argv).status == "none"
    first = jobs.submit(argv)
    second = jobs.submit(argv)
    assert first.active and second.pid == first.pid, (first, second)
    done = _wait(argv)
    assert done.status == "done", done.error
    assert done.threads == 1, "the state records the threads the job computed with (shown on the page)"
    assert set(done.result) == {"harmful", "task", "general"} and len(done.result["harmful"]["pairs"]) == 4
    assert jobs.submit(argv).pid == first.pid, "a finished job is not started again"
    assert answers.lookup(answers.answer_key(argv)) == done.result


def test_progress_partials_and_cancel(tiny_model_dir, tiny_adapter_dir):
    argv = ["landscape", *_pair(tiny_model_dir, tiny_adapter_dir), "--grid", "25", "--samples", "4"]
    jobs.submit(argv)
    running = _wait(argv, until=lambda s: len(s.partials) >= 2 or not s.active)
    assert running.status == "running" and 0 < running.fraction < 1
    assert running.partials[0]["row"] == 0 and len(running.partials[0]["values"]) == 25
    jobs.cancel(argv)
    final = _wait(argv)
    assert final.status == "cancelled"
    assert jobs.cached_answer(argv) is None, "a cancelled job leaves no answer"
    jobs.submit(argv)
    assert jobs.status(argv).active, "a cancelled job can be started again"
    jobs.cancel(argv)
    _wait(argv)


def test_bad_input_fails_with_one_line(tmp_path):
    argv = ["correlate", "--base", str(tmp_path / "missing"), "--finetuned", str(tmp_path / "missing2")]
    jobs.submit(argv)
    state = _wait(argv)
    assert state.status == "failed" and "\n" not in state.error
    assert "missing" in state.error and "Fix:" in state.error


UNANSWERED = ["correlate", "--n", "977"]  # a command line no test computes


def test_a_dead_job_reads_as_failed(monkeypatch):
    argv = UNANSWERED
    state = jobs.JobState(jobs.job_id(argv), argv, status="running", pid=2**22 + 1)
    jobs._dir(argv).mkdir(parents=True, exist_ok=True)
    jobs._write(jobs._dir(argv), state)
    assert jobs.status(argv).status == "failed"


def test_a_stale_answer_is_not_shown(tiny_model_dir, tiny_adapter_dir, monkeypatch):
    argv = UNANSWERED
    jobs._dir(argv).mkdir(parents=True, exist_ok=True)
    jobs._write(jobs._dir(argv), jobs.JobState(jobs.job_id(argv), argv, status="done", result={"old": 1}))
    assert jobs.status(argv).status == "none", "a done state without a current answer counts as never run"


def test_an_invalid_command_line_fails_with_one_line():
    argv = ["correlate", "--n", "many"]
    jobs.submit(argv)
    state = _wait(argv)
    assert state.status == "failed" and "--n" in state.error and "Fix:" in state.error and "\n" not in state.error


def test_a_run_whose_process_is_gone_reads_as_interrupted():
    import json
    import os

    from core.restoration.store import list_runs, runs_dir

    for rid, pid in (("live", os.getpid()), ("gone", 2**22 + 1)):
        (runs_dir() / rid).mkdir(parents=True, exist_ok=True)
        (runs_dir() / rid / "record.json").write_text(
            json.dumps({"id": rid, "method": "interpolate", "status": "running", "pid": pid, "steps": []})
        )
    status = {r["id"]: r["status"] for r in list_runs()}
    assert status["live"] == "running" and status["gone"] == "interrupted"


def test_identical_submits_at_once_start_one_process(tiny_model_dir, tiny_adapter_dir):
    """Eight simultaneous clicks on the same request: one process, every caller sees its pid."""
    from concurrent.futures import ThreadPoolExecutor

    argv = ["landscape", *_pair(tiny_model_dir, tiny_adapter_dir), "--grid", "29", "--samples", "4"]
    with ThreadPoolExecutor(8) as pool:
        states = list(pool.map(lambda _: jobs.submit(argv), range(8)))
    spawned = (jobs._dir(argv) / "spawned").read_text().split()
    assert len(spawned) == 1, spawned
    assert {s.pid for s in states if s.pid} <= {int(spawned[0])}
    jobs.cancel(argv)
    assert _wait(argv).status == "cancelled"


def test_a_second_model_job_waits_in_line(tiny_model_dir, tiny_adapter_dir):
    """With one slot (the default), a second computing job is queued with its place, and a cancel
    while queued ends it cleanly."""
    first = ["landscape", *_pair(tiny_model_dir, tiny_adapter_dir), "--grid", "27", "--samples", "4"]
    second = ["landscape", *_pair(tiny_model_dir, tiny_adapter_dir), "--grid", "23", "--samples", "4"]
    jobs.submit(first)
    _wait(first, until=lambda s: s.status == "running" or not s.active)
    jobs.submit(second)
    queued = _wait(second, until=lambda s: s.status == "queued" or not s.active)
    assert queued.status == "queued" and "place 1 of 1" in queued.message, queued
    jobs.cancel(second)
    assert _wait(second).status == "cancelled"
    jobs.cancel(first)
    assert _wait(first).status == "cancelled"


def test_running_jobs_share_the_cores(monkeypatch):
    """Each running job gets cores // SAFETY_MAX_JOBS torch threads (at least one) unless
    SAFETY_JOB_THREADS says otherwise; a command line's own --threads wins."""
    monkeypatch.setattr(jobs.os, "cpu_count", lambda: 8)
    monkeypatch.setenv("SAFETY_MAX_JOBS", "3")
    monkeypatch.delenv("SAFETY_JOB_THREADS", raising=False)
    assert jobs.JobSettings.from_env().threads_per_job() == 2
    monkeypatch.setenv("SAFETY_MAX_JOBS", "16")
    assert jobs.JobSettings.from_env().threads_per_job() == 1
    monkeypatch.setenv("SAFETY_JOB_THREADS", "5")
    assert jobs.JobSettings.from_env().threads_per_job() == 5
    assert jobs._threads_of(["correlate", "--threads", "3", "--n", "4"]) == 3
    assert jobs._threads_of(["correlate", "--n", "4"]) is None
