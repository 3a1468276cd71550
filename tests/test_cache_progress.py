"""The on-disk store (atomic directories, memoize) and progress/cancellation."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from core.base.cache import atomic_dir, atomic_write_text, memoize, results_store, stable_hash
from core.base.errors import Cancelled, InputError
from core.base.paths import cache_dir
from core.base.progress import Progress, ProgressEvent, stderr_bar


def test_unit_tests_use_a_redirected_cache(session_cache_dir):
    assert cache_dir() == Path(session_cache_dir)
    assert cache_dir() != Path(__file__).resolve().parent.parent / "cache"


# --- stable_hash --------------------------------------------------------------------------------


def test_stable_hash_is_order_independent_for_dict_keys_and_sensitive_to_values():
    assert stable_hash({"a": 1, "b": 2}) == stable_hash({"b": 2, "a": 1})
    assert stable_hash({"a": 1}) != stable_hash({"a": 2})
    assert len(stable_hash("x")) == 16 and len(stable_hash("x", length=8)) == 8


# --- atomic_dir ---------------------------------------------------------------------------------


def test_atomic_dir_success_renames_into_place(tmp_path):
    final = tmp_path / "sub" / "artefact"
    with atomic_dir(final) as tmp:
        assert tmp != final and tmp.parent == final.parent and tmp.is_dir()
        assert not final.exists()
        (tmp / "file.txt").write_text("hello")
    assert (final / "file.txt").read_text() == "hello"
    assert [p.name for p in final.parent.iterdir()] == ["artefact"]


def test_atomic_dir_failure_leaves_nothing(tmp_path):
    final = tmp_path / "artefact"
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_dir(final) as tmp:
            (tmp / "half.txt").write_text("half written")
            raise RuntimeError("boom")
    assert not final.exists()
    assert list(tmp_path.iterdir()) == []  # no .tmp-* sibling either


def test_atomic_dir_cancel_keeps_previous_version(tmp_path):
    final = tmp_path / "artefact"
    with atomic_dir(final) as tmp:
        (tmp / "v").write_text("1")
    with pytest.raises(Cancelled):
        with atomic_dir(final) as tmp:
            (tmp / "v").write_text("2")
            raise Cancelled("stop")
    assert (final / "v").read_text() == "1"
    assert [p.name for p in tmp_path.iterdir()] == ["artefact"]


def test_atomic_dir_replaces_existing(tmp_path):
    final = tmp_path / "artefact"
    with atomic_dir(final) as tmp:
        (tmp / "old").write_text("old")
    with atomic_dir(final) as tmp:
        (tmp / "new").write_text("new")
    assert sorted(p.name for p in final.iterdir()) == ["new"]


def test_atomic_write_text(tmp_path):
    path = tmp_path / "a" / "b.txt"
    atomic_write_text(path, "héllo")
    atomic_write_text(path, "second")
    assert path.read_text(encoding="utf-8") == "second"
    assert [p.name for p in path.parent.iterdir()] == ["b.txt"]


# --- memoize ------------------------------------------------------------------------------------


def test_memoize_stores_and_reuses(request):
    ns = f"test-{request.node.name}"
    calls = []

    def compute():
        calls.append(1)
        return {"value": [1, 2, 3]}

    assert memoize(ns, {"k": 1}, compute) == {"value": [1, 2, 3]}
    assert memoize(ns, {"k": 1}, lambda: pytest.fail("compute must not run on a hit")) == {"value": [1, 2, 3]}
    assert calls == [1]
    assert memoize(ns, {"k": 2}, compute) == {"value": [1, 2, 3]}  # another key computes
    assert calls == [1, 1]
    assert memoize(ns, {"k": 1}, lambda: "fresh", refresh=True) == "fresh"
    assert memoize(ns, {"k": 1}, lambda: pytest.fail("refreshed value is stored")) == "fresh"


def test_memoize_stores_nothing_when_compute_raises(request):
    ns = f"test-{request.node.name}"

    def bad():
        raise InputError("bad input.", "fix it.")

    with pytest.raises(InputError):
        memoize(ns, {"k": 1}, bad)

    def cancelled():
        raise Cancelled("stop")

    with pytest.raises(Cancelled):
        memoize(ns, {"k": 1}, cancelled)
    with results_store() as store:
        assert f"{ns}:{stable_hash({'k': 1})}" not in store
    assert memoize(ns, {"k": 1}, lambda: 42) == 42


def test_memoize_caches_falsy_values(request):
    ns = f"test-{request.node.name}"
    assert memoize(ns, {}, lambda: None) is None
    assert memoize(ns, {}, lambda: pytest.fail("None was stored")) is None


def test_memoize_writes_under_cache_dir(request, session_cache_dir):
    memoize(f"test-{request.node.name}", {}, lambda: 1)
    assert (Path(session_cache_dir) / "results").is_dir()


# --- progress -----------------------------------------------------------------------------------


def test_progress_update_reports_fraction_message_partial():
    events = []
    p = Progress(events.append)
    p.update(0.25, "quarter", {"x": 1})
    assert len(events) == 1
    e = events[0]
    assert isinstance(e, ProgressEvent)
    assert e.fraction == 0.25 and e.message == "quarter" and e.partial == {"x": 1}
    assert e.elapsed_s >= 0 and e.eta_s is not None and e.eta_s >= 0


def test_progress_clamps_and_eta_none_at_zero():
    events = []
    p = Progress(events.append)
    p.update(-1.0)
    p.update(2.0)
    assert [e.fraction for e in events] == [0.0, 1.0]
    assert events[0].eta_s is None
    assert events[1].eta_s == 0


def test_progress_stage_maps_fractions():
    events = []
    root = Progress(events.append)
    child = root.stage(0.2, 0.6)
    child.update(0.0)
    child.update(0.5)
    child.update(1.0)
    grandchild = child.stage(0.5, 1.0)  # [0.4, 0.6] of the root
    grandchild.update(0.5)
    root.stage(0.6, 1.0).update(1.0)
    assert [round(e.fraction, 9) for e in events] == [0.2, 0.4, 0.6, 0.5, 1.0]
    assert child.start == root.start


def test_progress_without_callback_is_silent():
    Progress().update(0.5, "nothing happens")
    Progress().stage(0.1, 0.2).update(1.0)


def test_cancel_event_makes_update_raise():
    cancel = threading.Event()
    events = []
    p = Progress(events.append, cancel)
    p.update(0.1)
    cancel.set()
    with pytest.raises(Cancelled):
        p.update(0.2)
    with pytest.raises(Cancelled):
        p.stage(0.5, 1.0).update(0.1)
    with pytest.raises(Cancelled):
        Progress(None, cancel).update(0.3)  # even without a callback
    assert [e.fraction for e in events] == [0.1]


def test_stderr_bar_writes_to_stderr_only(capsys):
    stderr_bar(ProgressEvent(0.5, "halfway", 10.0, 10.0))
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("\r[")
    assert "#" * 15 + "." * 15 in err and "50.0%" in err and "halfway" in err and "ETA" in err
    assert not err.endswith("\n")
    stderr_bar(ProgressEvent(1.0, "done", 0.0, 20.0))
    out, err = capsys.readouterr()
    assert out == "" and "#" * 30 in err and "100.0%" in err and err.endswith("\n")
    stderr_bar(ProgressEvent(0.0, "start", None, 0.0))
    out, err = capsys.readouterr()
    assert out == "" and "ETA" not in err
