"""Background jobs: one ``python -m core`` command line run in its own process, its live state on disk.

The dashboard never computes in its script thread. It submits a command line (the same one a
researcher would type); a detached process runs it through ``core.service.commands.execute`` and writes
``cache/jobs/<id>/state.json`` as it goes: status, fraction, ETA, message, the partial results
so far, then the answer or a one-line error. The id is a hash of the command line, so a page
reload, a second tab or a second user finds the same job, and a second click joins the first.
Finished answers come from ``core.service.answer_cache``, which also notices a rebuilt world or
changed inputs.

One process per job: the submitter takes an exclusive ``flock`` on the job's ``lock`` file and
hands that open file to the job process, which holds it for its whole life (the kernel releases it
when the process ends, however it ends); a submit that cannot take the lock joins the running job.
Admission control: a job that has to compute waits (status ``queued``, with its place in line)
until one of ``JobSettings.max_running`` slots is free, so three clicks do not load three models
onto one device; each running job gets ``cores // max_running`` torch threads unless set.

Cancelling creates ``cancel`` in the job's folder; the job's progress callback sees it at its
next update and stops at a clean point (``core.base.progress``), writing nothing half-done.
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.base.cache import atomic_write_text, stable_hash
from core.base.errors import Cancelled, InputError, write_failure
from core.base.paths import PROJECT_ROOT, cache_dir
from core.base.process import process_alive
from core.service import answer_cache

ACTIVE = ("starting", "queued", "running")
MAX_PARTIALS = 2000
WRITE_EVERY_S = 0.5


@dataclass
class JobState:
    """What a page shows of one job: ``status`` is none, starting, queued, running, done, failed or cancelled."""

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
    threads: int | None = None  # torch threads the job computes with (shown on the page)
    updated: float = 0.0

    @property
    def active(self) -> bool:
        return self.status in ACTIVE


@dataclass(frozen=True)
class JobSettings:
    """How many model-loading jobs run at once and with how many torch threads each; read from
    ``SAFETY_MAX_JOBS`` and ``SAFETY_JOB_THREADS`` (0: the cores shared evenly among running jobs)."""

    max_running: int = 1  # one model-loading job per machine by default: jobs load whole models
    threads: int = 0

    @classmethod
    def from_env(cls) -> "JobSettings":
        return cls(int(os.environ.get("SAFETY_MAX_JOBS", 1)), int(os.environ.get("SAFETY_JOB_THREADS", 0)))

    def threads_per_job(self) -> int:
        return self.threads or max(1, (os.cpu_count() or 1) // max(1, self.max_running))


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
    fd = os.open(d / "lock", os.O_CREAT | os.O_RDWR, 0o600)
    try:
        if not _lock_job(fd, argv):
            return status(argv)  # another submit holds the job: join it
        current = status(argv)  # recheck under the lock: a job may have finished or started meanwhile
        if current.active or (current.status == "done" and current.result is not None):
            return current
        _spawn(d, argv, fd)
    finally:
        os.close(fd)  # the job process keeps its own copy of the locked file open until it ends
    return status(argv)


def _lock_job(fd: int, argv: list[str], patience_s: float = 10.0) -> bool:
    """Take the job's lock. While a live job holds it, give up at once (join it); while a job
    that has just ended (cancelled, failed) is still exiting, wait for it up to ``patience_s``."""
    deadline = time.monotonic() + patience_s
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if status(argv).active or time.monotonic() > deadline:
                return False
            time.sleep(0.1)


def _spawn(d: Path, argv: list[str], lock_fd: int) -> None:
    (d / "cancel").unlink(missing_ok=True)
    _write(d, JobState(job_id(argv), argv, status="starting", message="starting", updated=time.time()))
    with open(d / "log.txt", "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "core.service.jobs", str(d), str(lock_fd)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            cwd=PROJECT_ROOT,
            pass_fds=(lock_fd,),
        )
    with open(d / "spawned", "a") as f:  # one line per process ever started for this job
        f.write(f"{proc.pid}\n")
    _write(d, JobState(job_id(argv), argv, status="starting", message="starting", pid=proc.pid, updated=time.time()))


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
    """Body of the job process: wait for a slot, run the command, write its final state
    (done, cancelled or failed). The caller keeps the job's lock open for the process's life."""
    from core.service.commands import execute  # only the job process loads the engine (torch)

    state = _read_state(d)
    state.pid = os.getpid()
    settings = JobSettings.from_env()
    cancel = _FileFlag(d / "cancel")
    try:
        argv = list(state.argv)
        if answer_cache.lookup(answer_cache.answer_key(argv)) is None:
            _wait_for_slot(d, state, settings, cancel)
            if "--threads" not in argv:
                argv += ["--threads", str(settings.threads_per_job())]
        state.threads = _threads_of(argv)
        state.status = "running"
        _write(d, state)
        result = execute(argv, _StateWriter(d, state), cancel)
        state.result = json.loads(json.dumps(result, default=_jsonable))
        state.status, state.fraction, state.message = "done", 1.0, "done"
        state.partials = []  # the answer supersedes them
    except Cancelled:
        state.status, state.message = "cancelled", "cancelled; nothing was written"
    except InputError as err:
        state.status, state.error = "failed", str(err)
    except Exception as err:  # a job must always end with a state a page can show, in one line
        first = str(err).splitlines()[0] if str(err) else ""
        state.status, state.error = "failed", write_failure(err) or f"{type(err).__name__}: {first}"
        state.result, state.partials = None, []
    state.updated = time.time()
    _write_final(d, state)
    return 0 if state.status == "done" else 1


def _threads_of(argv: list[str]) -> int | None:
    """The job's ``--threads`` value (``None``: not set, so torch's default, all cores)."""
    if "--threads" in argv[:-1]:
        value = argv[argv.index("--threads") + 1]
        return int(value) if value.isdigit() and int(value) > 0 else None
    return None


def _write_final(d: Path, state: JobState) -> None:
    """The final state; if even that cannot be written whole, a small one without the answer."""
    try:
        _write(d, state)
    except OSError:
        state.result, state.partials = None, []
        if state.status == "done":
            state.status, state.error = "failed", "could not store the answer (disk full?). Fix: free disk space."
        _write(d, state)


_SLOT = None  # the open slot file this process holds (released when the process ends)


def _wait_for_slot(d: Path, state: JobState, settings: JobSettings, cancel: "_FileFlag") -> None:
    """Block until one of ``settings.max_running`` slot locks is ours; meanwhile report the
    job as queued with its place in line (tickets ordered by arrival)."""
    global _SLOT
    slots = jobs_dir() / "slots"
    slots.mkdir(parents=True, exist_ok=True)
    ticket = slots / f"queue-{time.time():.6f}-{os.getpid()}"
    ticket.write_text(str(os.getpid()))
    try:
        while True:
            for i in range(max(1, settings.max_running)):
                fd = os.open(slots / f"slot-{i}", os.O_CREAT | os.O_RDWR, 0o600)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    os.close(fd)
                    continue
                _SLOT = fd
                return
            if cancel.is_set():
                raise Cancelled("cancelled while queued")
            place, waiting = _place(slots, ticket)
            state.status, state.message = "queued", f"queued: place {place} of {waiting}, waiting for a free slot"
            state.updated = time.time()
            _write(d, state)
            time.sleep(1.0)
    finally:
        ticket.unlink(missing_ok=True)


def _place(slots: Path, ticket: Path) -> tuple[int, int]:
    """(1-based place of ``ticket``, tickets waiting), counting only tickets whose process lives."""
    alive = sorted(t for t in slots.glob("queue-*") if process_alive(int(t.name.rsplit("-", 1)[1])))
    return (alive.index(ticket) + 1 if ticket in alive else len(alive)), len(alive)


if __name__ == "__main__":
    sys.exit(run(Path(sys.argv[1])))  # sys.argv[2], the inherited lock's fd, stays open until exit
