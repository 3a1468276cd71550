"""Faults a user or a crash leaves behind: each is detected, reported in one line or healed, and
nothing is lost or served stale."""

from __future__ import annotations

import json
import os
import sqlite3

import pytest

from core.base.cache import clean_orphans, memoize, results_store
from core.base.errors import InputError
from core.base.paths import cache_dir
from core.restoration.store import list_runs, load_record, runs_dir
from core.world.models import safetensors_intact


def _corrupt_entry(namespace_key: str) -> None:
    """Overwrite the stored bytes of one results-store entry with garbage (a torn write)."""
    db = cache_dir() / "results" / "cache.db"
    with sqlite3.connect(db) as conn:
        changed = conn.execute("UPDATE Cache SET value = ? WHERE key = ?", (b"\x80\x04garbage", namespace_key)).rowcount
    assert changed == 1


def test_a_corrupt_cached_value_is_recomputed_not_raised():
    from core.base.cache import stable_hash

    key = {"fault": "value"}
    assert memoize("fault-test", key, lambda: {"answer": 1}) == {"answer": 1}
    _corrupt_entry(f"fault-test:{stable_hash(key)}")
    assert memoize("fault-test", key, lambda: {"answer": 2}) == {"answer": 2}, "recomputed after corruption"
    assert memoize("fault-test", key, lambda: {"answer": 3}) == {"answer": 2}, "and stored again"


class _Payload:
    """Pickles as a call of ``os.system`` (what a crafted cache row carries)."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _plant(full_key: str, blob: bytes, mode: int = 4) -> None:
    """Put raw bytes into a results-store row as diskcache would find them (mode 4: a pickle)."""
    db = cache_dir() / "results" / "cache.db"
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE Cache SET value = ?, mode = ?, filename = NULL WHERE key = ?", (blob, mode, full_key))


def test_a_crafted_pickle_in_the_cache_never_runs_and_is_recomputed(tmp_path):
    import pickle

    from core.base.cache import stable_hash

    key, marker = {"fault": "crafted"}, tmp_path / "pwned"
    full_key = f"fault-test:{stable_hash(key)}"
    assert memoize("fault-test", key, lambda: {"answer": 1}) == {"answer": 1}
    _plant(full_key, pickle.dumps(_Payload(str(marker))))
    assert memoize("fault-test", key, lambda: {"answer": 2}) == {"answer": 2}, "treated as damaged: recomputed"
    assert not marker.exists(), "the crafted row's code ran"
    quarantined = list((cache_dir() / "quarantine").glob("fault-test-*.damaged"))
    assert quarantined and b"system" in quarantined[-1].read_bytes(), "kept aside for a look, never read back"
    assert memoize("fault-test", key, lambda: {"answer": 3}) == {"answer": 2}, "stored again, as JSON"
    with sqlite3.connect(cache_dir() / "results" / "cache.db") as conn:
        mode, value = conn.execute("SELECT mode, value FROM Cache WHERE key = ?", (full_key,)).fetchone()
    assert mode == 1 and bytes(value).startswith(b"SDJ1{"), "the new row is JSON, not a pickle"


def test_a_plain_data_pickle_from_before_the_json_store_is_read_and_rewritten():
    """Rows written by earlier versions (plain dicts, lists, tuples, numbers) stay usable."""
    import pickle

    from core.base.cache import stable_hash

    key, value = {"fault": "legacy"}, {"r": 0.9, "pairs": [(1, 2.0)], "ok": True}
    full_key = f"fault-test:{stable_hash(key)}"
    memoize("fault-test", key, lambda: {"placeholder": 0})
    _plant(full_key, pickle.dumps(value))
    assert memoize("fault-test", key, lambda: pytest.fail("a legacy row is recomputed")) == value
    with sqlite3.connect(cache_dir() / "results" / "cache.db") as conn:
        (mode,) = conn.execute("SELECT mode FROM Cache WHERE key = ?", (full_key,)).fetchone()
    assert mode == 1, "rewritten as JSON on first read"


def test_a_truncated_cache_value_file_is_recomputed():
    """A large value lives in a ``.val`` file beside the database; cut it short."""
    import numpy as np

    from core.base.cache import stable_hash

    key = {"fault": "val-file"}
    big = {"grid": np.arange(20_000, dtype=np.float64)}
    memoize("fault-test", key, lambda: big)
    with sqlite3.connect(cache_dir() / "results" / "cache.db") as conn:
        (filename,) = conn.execute(
            "SELECT filename FROM Cache WHERE key = ?", (f"fault-test:{stable_hash(key)}",)
        ).fetchone()
    assert filename, "stored as a file"
    val = cache_dir() / "results" / filename
    val.write_bytes(val.read_bytes()[: val.stat().st_size // 2])
    again = memoize("fault-test", key, lambda: {"grid": np.zeros(3)})
    assert again["grid"].tolist() == [0.0, 0.0, 0.0], "recomputed, not a half value"


def test_a_damaged_results_database_is_moved_aside_and_rebuilt():
    with results_store() as store:
        store["x"] = 1
    db = cache_dir() / "results" / "cache.db"
    db.write_bytes(b"this is not a sqlite database" * 100)
    with results_store() as store:
        assert store.get("x") is None
        store["x"] = 2
    assert any(p.name.startswith("results.damaged-") for p in cache_dir().iterdir())


def test_a_truncated_run_record_is_quarantined_and_the_listing_survives():
    good, bad = runs_dir() / "goodrun", runs_dir() / "badrun"
    for d in (good, bad):
        d.mkdir(parents=True, exist_ok=True)
    (good / "record.json").write_text(json.dumps({"id": "goodrun", "status": "done", "steps": [], "started": 1}))
    (bad / "record.json").write_text('{"id": "badrun", "status": "do')
    assert [r["id"] for r in list_runs() if r["id"] in ("goodrun", "badrun")] == ["goodrun"]
    assert (bad / "record.json.damaged").exists() and not (bad / "record.json").exists()
    assert load_record("badrun") is None, "a damaged run counts as never run: asking again recomputes it"


def test_a_truncated_safetensors_file_is_detected(tiny_model_dir, tmp_path):
    weights = next(tiny_model_dir.glob("*.safetensors"))
    assert safetensors_intact(weights)
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(weights.read_bytes()[:-100])
    assert not safetensors_intact(cut)
    cut.write_bytes(os.urandom(2000))
    assert not safetensors_intact(cut)


def test_a_damaged_world_names_the_file_and_the_rebuild(monkeypatch, tmp_path):
    import core.world.demo as demo

    config = demo.WorldConfig(seed=987)
    root = demo.world_dir(config)
    (root / "base").mkdir(parents=True)
    (root / "world.json").write_text('{"seed": 987, "inje')
    with pytest.raises(InputError, match="world.json is damaged") as err:
        demo.load_world(config)
    assert "--rebuild" in str(err.value) and "\n" not in str(err.value)
    (root / "world.json").write_text(json.dumps({"seed": 987}))
    (root / "base" / "model.safetensors").write_bytes(b'\x10\x00\x00\x00\x00\x00\x00\x00{"a": 1')
    with pytest.raises(InputError, match="model.safetensors is damaged"):
        demo.load_world(config)


def test_orphan_temporaries_of_dead_writers_are_removed():
    worlds = cache_dir() / "worlds"
    dead = worlds / ".tmp-abc-4194303-deadbeef"  # pid 2**22 - 1: above pid_max defaults, never alive
    alive = worlds / f".tmp-abc-{os.getpid()}-cafebabe"
    for d in (dead, alive):
        d.mkdir(parents=True)
    removed = clean_orphans()
    assert dead in removed and not dead.exists() and alive.exists()


# ---------------------------------------------------------------------------- disk full, kill -9
def _fill_disk(kind: str):
    """A write that fails as a full disk does: diskcache's value file (OSError ENOSPC) or its
    sqlite row (``database or disk is full``)."""
    import errno

    def fail(*args, **kwargs):
        if kind == "file":
            raise OSError(errno.ENOSPC, "No space left on device")
        raise sqlite3.OperationalError("database or disk is full")

    return fail


@pytest.mark.parametrize("kind", ["file", "sqlite"])
def test_a_disk_full_write_ends_the_job_failed_with_one_line(kind, monkeypatch):
    """The job's answer cannot be stored: its state says failed in one line, no answer and no
    temporary is left, and the same job runs again once there is room."""
    import diskcache

    import core.service.commands as commands
    from core.service import jobs

    argv = ["correlate", "--n", "971", "--threads", "1"]
    d = jobs._dir(argv)
    d.mkdir(parents=True, exist_ok=True)
    jobs._write(d, jobs.JobState(jobs.job_id(argv), argv, status="starting"))
    monkeypatch.setattr(jobs, "_wait_for_slot", lambda *a: None)  # in-process: hold no slot after the test
    monkeypatch.setattr(commands, "execute", lambda argv, *a: memoize("disk-full", {"kind": kind}, lambda: {"r": 1.0}))
    monkeypatch.setattr(diskcache.Cache, "__setitem__", _fill_disk(kind))
    assert jobs.run(d) == 1
    state = json.loads((d / "state.json").read_text())
    assert state["status"] == "failed" and state["result"] is None and state["partials"] == []
    assert "\n" not in state["error"] and "could not write" in state["error"] and "Fix:" in state["error"]
    assert not list(d.glob(".tmp-*")), "no half-written state"
    monkeypatch.undo()
    with results_store() as store:
        assert not any(k.startswith("disk-full:") for k in store.iterkeys()), "no half-written answer"


def test_a_disk_full_write_on_the_command_line_is_one_line(monkeypatch, capsys):
    import diskcache

    import core.cli as cli

    monkeypatch.setattr(cli, "execute", lambda argv, **kw: memoize("disk-full-cli", {}, lambda: {"r": 1.0}))
    monkeypatch.setattr(diskcache.Cache, "__setitem__", _fill_disk("sqlite"))
    assert cli.main(["correlate", "--json"]) == 1
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and "could not write" in err and "Traceback" not in err


def test_a_really_full_disk_keeps_the_results_store(tmp_path, monkeypatch):
    """On a 1 MiB tmpfs (where mounting is allowed): a value that does not fit fails with a
    write error, leaves no partial value file, and the store is not mistaken for damaged."""
    import subprocess

    import numpy as np

    from core.base.errors import write_failure

    mnt = tmp_path / "tiny"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (not root, or no CAP_SYS_ADMIN); the injected faults cover it")
    try:
        monkeypatch.setenv("SAFETY_CACHE_DIR", str(mnt / "cache"))
        assert memoize("full", {"small": 1}, lambda: {"r": 0.5}) == {"r": 0.5}
        with pytest.raises((OSError, sqlite3.OperationalError)) as err:
            memoize("full", {"big": 1}, lambda: {"grid": np.ones(300_000)})
        assert write_failure(err.value) is not None
        assert not list((mnt / "cache").glob("results.damaged-*")), "a full disk is not a damaged database"
        assert not [p for p in (mnt / "cache" / "results").rglob("*.val")], "no partial value file"
        assert memoize("full", {"small": 1}, lambda: pytest.fail("recomputed")) == {"r": 0.5}, "earlier results kept"
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _wait(argv, until, timeout: float = 240.0):
    import time

    from core.service import jobs

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = jobs.status(argv)
        if until(state):
            return state
        time.sleep(0.3)
    raise AssertionError(f"{argv}: still {jobs.status(argv).status} after {timeout} s")


def test_kill_9_mid_job_leaves_a_readable_state_and_a_rerun_completes(tiny_model_dir, tiny_adapter_dir):
    import signal

    from core.base.process import process_alive
    from core.service import jobs

    pair = ["--base", str(tiny_model_dir), "--finetuned", str(tiny_adapter_dir), "--threads", "1"]
    argv = ["landscape", *pair, "--grid", "5", "--samples", "2", "--no-floor"]
    first = jobs.submit(argv)
    running = _wait(argv, lambda s: s.partials or not s.active)
    assert running.status == "running", running
    os.kill(first.pid, signal.SIGKILL)
    _wait(argv, lambda s: not process_alive(first.pid), timeout=30)
    state = json.loads((jobs._dir(argv) / "state.json").read_text())  # readable, not torn
    assert state["status"] == "running"
    seen = jobs.status(argv)
    assert seen.status == "failed" and "\n" not in seen.error and "killed" in seen.error
    assert jobs.cached_answer(argv) is None, "a killed job leaves no answer"
    again = jobs.submit(argv)
    assert again.pid != first.pid
    done = _wait(argv, lambda s: not s.active)
    assert done.status == "done", done.error
    assert len(done.result["surfaces"] if "surfaces" in done.result else done.result) > 0


WRITER = """
import json, sys
from core.base.cache import atomic_write_text
from core.restoration.store import runs_dir

steps = int(sys.argv[1])
record = {"id": "killed", "method": "interpolate", "status": "running", "pid": __import__("os").getpid(), "steps": []}
path = runs_dir() / "killed" / "record.json"
for i in range(steps):
    record["steps"].append({"step": i, "harmful_rate": 50.0, "pad": "x" * 2000})
    atomic_write_text(path, json.dumps(record, indent=1))  # as the runner writes after every step
print("wrote", flush=True)
record["status"] = "done"
atomic_write_text(path, json.dumps(record, indent=1))
"""


def test_kill_9_mid_run_record_write_leaves_a_readable_record_and_a_rerun_completes():
    """A run killed while it rewrites its record: the record reads whole (the old or the new
    version, never a torn one), the run shows as interrupted, the dead writer's temporary is
    cleaned, and a rerun finishes."""
    import signal
    import subprocess
    import sys
    import time

    from core.base.paths import PROJECT_ROOT

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", WRITER, "100000"], cwd=PROJECT_ROOT, env=env)
    path = runs_dir() / "killed" / "record.json"
    deadline = time.monotonic() + 60
    while not (path.exists() and path.stat().st_size > 200_000) and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    record = load_record("killed")
    assert record is not None and record["steps"], "readable after kill -9"
    assert not (path.parent / "record.json.damaged").exists()
    assert {r["id"]: r["status"] for r in list_runs()}["killed"] == "interrupted"
    clean_orphans()
    assert not list(path.parent.glob(".tmp-*")), "the dead writer's temporary is removed"
    rerun = subprocess.run([sys.executable, "-c", WRITER, "3"], cwd=PROJECT_ROOT, env=env, capture_output=True)
    assert rerun.returncode == 0, rerun.stderr
    assert load_record("killed")["status"] == "done"
