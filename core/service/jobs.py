"""Background jobs: one ``python -m core`` command line run in its own process, its live state on disk.

The dashboard never computes in its script thread. It submits a command line (the same one a
researcher would type); a detached process runs it through ``core.service.commands.execute`` and writes
``cache/jobs/<id>/state.json`` as it goes: status, fraction, ETA, message, the partial results
so far, then the answer or a one-line error. The id is a hash of the command line, so a page
reload, a second tab or a second user finds the same job, and a second click joins the first
(an exclusive claim file decides who starts it). Finished answers come from ``core.service.answer_cache``,
which also notices a rebuilt world or changed inputs.

Cancelling creates ``cancel`` in the job's folder; the job's progress callback sees it at its
next update and stops at a clean point (``core.base.progress``), writing nothing half-done.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.base.cache import atomic_write_text, stable_hash
from core.base.errors import Cancelled, InputError
from core.base.paths import PROJECT_ROOT, cache_dir
from core.base.process import process_alive
from core.service import answer_cache

ACTIVE = ("starting", "running")
MAX_PARTIALS = 2000
WRITE_EVERY_S = 0.5


@dataclass
class JobState:
    """What a page shows of one job: ``status`` is none, starting, running, done, failed or cancelled."""

    id: str
    argv: list[str]
    status: str = "none"
    fraction: float = 0.0
    message: str = ""
    eta_s: float | None = None
    elapsed_s: float = 0.0
    partials: list[Any] = field(default_factory=list)
    result: dict[str, Any] | None = None
    error: str | None = None
    pid: int | None = None
    updated: float = 0.0

    @property
    def active(self) -> bool:
        return self.status in ACTIVE


def jobs_dir() -> Path:
    return cache_dir() / "jobs"


def job_id(argv: list[str]) -> str:
    return stable_hash(list(argv))


def _dir(argv: list[str]) -> Path:
    return jobs_dir() / job_id(argv)


def cached_answer(argv: list[str]) -> dict[str, Any] | None:
    """The finished answer of this command line, if the answer cache has a current one (no torch)."""
    return answer_cache.lookup(answer_cache.answer_key(argv))


def _read_state(d: Path) -> JobState | None:
    try:
        raw = json.loads((d / "state.json").read_text())
    except (OSError, ValueError):
        return None
    return JobState(**{k: v for k, v in raw.items() if k in JobState.__dataclass_fields__})


def status(argv: list[str]) -> JobState:
    """The job's state. A current cached answer counts as done; a done job whose answer is no
    longer current (world rebuilt, inputs or code changed) counts as never run; a job whose
    process died without a word counts as failed."""
    state = _read_state(_dir(argv)) or JobState(job_id(argv), list(argv))
    if state.active and not process_alive(state.pid):
        state.status, state.error = (
            "failed",
            state.error or "the job's process ended without a result (killed or out of memory?)",
        )
    if state.active:
        return state
    key = answer_cache.answer_key(argv)
    answer = answer_cache.lookup(key)
    if answer is not None:
        state.status, state.result, state.fraction, state.error = "done", answer, 1.0, None
    elif state.status == "done" and key is not None:
        state = JobState(job_id(argv), list(argv))
    return state


def submit(argv: list[str]) -> JobState:
    """Start this command line in the background, or join the job already running it."""
    argv = list(argv)
    current = status(argv)
    if current.active or (current.status == "done" and current.result is not None):
        return current
    d = _dir(argv)
    d.mkdir(parents=True, exist_ok=True)
    claim = d / "claim"
    try:
        fd = os.open(claim, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return status(argv)  # another click got there first: join it
    try:
        (d / "cancel").unlink(missing_ok=True)
        _write(d, JobState(job_id(argv), argv, status="starting", message="starting", updated=time.time()))
        log = open(d / "log.txt", "w")
        proc = subprocess.Popen(
            [sys.executable, "-m", "core.service.jobs", str(d)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            cwd=PROJECT_ROOT,
        )
        _write(
            d, JobState(job_id(argv), argv, status="starting", message="starting", pid=proc.pid, updated=time.time())
        )
    finally:
        os.close(fd)
        claim.unlink(missing_ok=True)
    return status(argv)


def cancel(argv: list[str]) -> None:
    """Ask a running job to stop at its next progress update."""
    d = _dir(argv)
    if d.is_dir():
        (d / "cancel").touch()


def _write(d: Path, state: JobState) -> None:
    atomic_write_text(d / "state.json", json.dumps(state.__dict__, default=_jsonable))


def _jsonable(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


class _FileFlag:
    """A ``threading.Event`` look-alike that is set when a file exists (the cancel request)."""

    def __init__(self, path: Path):
        self.path = path

    def is_set(self) -> bool:
        return self.path.exists()


class _StateWriter:
    """Progress callback of a running job: keeps partial results, writes state at most every 0.5 s."""

    def __init__(self, d: Path, state: JobState):
        self.d, self.state, self.last = d, state, 0.0

    def __call__(self, event) -> None:
        s = self.state
        s.status, s.fraction, s.message, s.eta_s, s.elapsed_s = (
            "running",
            event.fraction,
            event.message,
            event.eta_s,
            event.elapsed_s,
        )
        if event.partial is not None and len(s.partials) < MAX_PARTIALS:
            s.partials.append(event.partial)
        now = time.monotonic()
        if event.partial is not None or now - self.last >= WRITE_EVERY_S:
            s.updated = time.time()
            _write(self.d, s)
            self.last = now


def run(d: Path) -> int:
    """Body of the job process: run the command, write its final state (done, cancelled or failed)."""
    from core.service.commands import execute  # only the job process loads the engine (torch)

    state = _read_state(d)
    state.pid, state.status = os.getpid(), "running"
    writer = _StateWriter(d, state)
    _write(d, state)
    try:
        state.result = json.loads(json.dumps(execute(state.argv, writer, _FileFlag(d / "cancel")), default=_jsonable))
        state.status, state.fraction, state.message = "done", 1.0, "done"
        state.partials = []  # the answer supersedes them
    except Cancelled:
        state.status, state.message = "cancelled", "cancelled; nothing was written"
    except InputError as err:
        state.status, state.error = "failed", str(err)
    except Exception as err:  # a job must always end with a state a page can show
        state.status, state.error = "failed", f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
    state.updated = time.time()
    _write(d, state)
    return 0 if state.status == "done" else 1


if __name__ == "__main__":
    sys.exit(run(Path(sys.argv[1])))
