"""The warm-up (``python -m core warmup``): each analysis of the default demo world at its quick
preset, then a quick curvature restoration, stored under the answer-cache key of the very command
line its page builds, skipped when already cached, cancellable, and one analysis's failure leaves
the others' previews. The commands themselves are replaced by planted answers (their own tests
compute them)."""

from __future__ import annotations

import json
import threading

import pytest
from samples import basin_result, correlation_result, curvature_result, landscape_result, restoration_record

from core.base.errors import Cancelled, InputError
from core.service import answer_cache, commands, warmup

ANSWERS = {
    "correlate": correlation_result,
    "curvature": curvature_result,
    "landscape": landscape_result,
    "basin": basin_result,
    "restore": restoration_record,
}
RUNS = [*warmup.ORDER, "restore"]  # what the warm-up runs, in order


@pytest.fixture
def planted(monkeypatch, tmp_path):
    """A fresh cache, and each analysis command answering its planted result (calls counted)."""
    monkeypatch.setenv("SAFETY_CACHE_DIR", str(tmp_path))
    calls: list[list[str]] = []

    def fake(name):
        def command(args, progress):
            calls.append(name)
            progress.update(0.5, f"{name} half way")
            return ANSWERS[name]()

        return command

    for name in ANSWERS:
        monkeypatch.setitem(commands.COMMANDS, name, fake(name))
    return calls


def test_plan_is_each_page_quick_command_line():
    plan = warmup.planned()
    assert [argv[0] for argv in plan] == RUNS
    assert warmup.quick_argv("correlate") == ["correlate", "--n", "40", "--null-seeds", "2"]
    assert plan[-1] == [
        "restore", "--method", "curvature", "--param", "iterations=1", "--param", "pair_batch=8",
        "--param", "step_grid=0.5,2.0,8.0",
    ]  # fmt: skip
    assert all(not t.startswith("--seed") and "--base" not in t for argv in plan for t in argv), "default pair only"


def test_warmup_stores_each_answer_under_the_page_key(planted):
    events = []
    out = commands.execute(warmup.ARGV, events.append, cached_answers=False)
    assert planted == RUNS
    for argv in warmup.planned():
        assert out["analyses"][argv[0]]["status"] == "computed"
        stored = answer_cache.lookup(answer_cache.answer_key(argv))
        assert json.dumps(stored, sort_keys=True) == json.dumps(ANSWERS[argv[0]](), sort_keys=True)  # NaN == NaN
    fractions = [e.fraction for e in events]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0, "one fraction over all analyses"
    assert any(e.message.startswith("landscape (3 of 5): landscape half way") for e in events), "current one named"
    assert events[0].partial == {"plan": warmup.planned()}, "the plan, for the pages to find their place"

    again = commands.execute(warmup.ARGV, None, cached_answers=False)
    assert planted == RUNS, "answers already cached are skipped"
    assert {a["status"] for a in again["analyses"].values()} == {"cached"}


def test_warmup_is_cancellable_and_survives_a_failed_analysis(planted, monkeypatch):
    stop = threading.Event()
    stop.set()
    with pytest.raises(Cancelled):
        commands.execute(warmup.ARGV, None, stop, cached_answers=False)
    assert answer_cache.lookup(answer_cache.answer_key(warmup.quick_argv("correlate"))) is None

    def broken(args, progress):
        raise InputError("The 'harmful' set is empty.", "pass a data set with at least 3 examples.")

    monkeypatch.setitem(commands.COMMANDS, "curvature", broken)
    out = commands.execute(warmup.ARGV, None, cached_answers=False)
    assert out["analyses"]["curvature"]["status"] == "failed"
    assert "set is empty" in out["analyses"]["curvature"]["error"]
    assert [out["analyses"][n]["status"] for n in ("correlate", "landscape", "basin", "restore")] == ["computed"] * 4


def test_warmup_takes_no_options():
    with pytest.raises(InputError):
        commands.parser().parse_args(["warmup", "--seed", "3"])
