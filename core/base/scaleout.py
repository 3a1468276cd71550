"""Scale-out on Ray: shards of one computation (landscape grid rows, basin points, correlate's loss
batches, compare's methods) shared out to Ray actors, one model replica per actor.

``session(workers, address, threads)`` opens the scale-out for one command: with ``workers <= 1``
and no address it does nothing and every ``map_shards`` runs in-process, exactly today's loop.
Otherwise it connects to ``address`` (``ray.init(address=...)``) or starts a local cluster sized to
``workers`` (``ray.init(num_cpus=workers)``), and ``map_shards`` sends each shard to one of
``workers`` actors (``num_gpus=1`` each where the cluster has a GPU per worker, else ``num_cpus=1``;
torch threads set to each actor's share). An actor builds its replica once per distinct ``load``
(a picklable callable, e.g. ``partial(load_model, spec)``) and keeps only the latest, so one model
is in its memory at a time. Results come back in shard order whatever order they finish in, and
each value is computed by the same code on the same inputs as in-process: identical answers.

Progress advances as shards finish (``ray.wait``); a set cancel event kills the actors
(``ray.kill``) and raises ``Cancelled``; a worker's error becomes one line (``InputError``). The
Ray calls follow Ray's Core API docs (docs.ray.io: ray-core/actors, ray.wait, ray.kill, ray.put,
ray.init address/num_cpus, runtime_env env_vars/py_modules). Ray is an optional dependency,
imported only when a session scales out.
"""

from __future__ import annotations

import hashlib
import os
import pickle
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from core.base.errors import Cancelled, InputError
from core.base.options import option
from core.base.progress import Progress

WAIT_S = 0.2  # how often the driver looks at the cancel event while shards run
ENV_PREFIXES = ("SAFETY_", "HF_", "TRANSFORMERS_", "TOKENIZERS_")  # what an actor must see as the driver does
PROJECT = Path(__file__).resolve().parents[2]
GPU_ACTOR = "SAFETY_RAY_GPU_ACTOR"  # set in an actor given a GPU: it sees that GPU alone, as cuda:0

Report = Callable[[int, Any], "tuple[str, Any]"]

_current: "_Pool | None" = None
_kept: "dict[tuple[int, int], _Pool]" = {}  # the actors of a Ray session someone else started


@dataclass(frozen=True)
class ScaleOut:
    """How a command spreads its shards, not what it computes (never part of an answer's key)."""

    workers: int = option(
        1,
        "Ray workers, one model replica each (1: in-process, no Ray); landscape, basin, correlate and compare",
        label="Ray workers (1: in-process)",
        low=1,
        high=256,
    )
    ray_address: str | None = option(
        None,
        "address of a running Ray cluster (default: a local cluster of --workers CPUs or GPUs)",
        label="Ray cluster address (empty: local)",
    )


def require_ray() -> Any:
    """The ``ray`` module, or a one-line error naming the fix."""
    try:
        import ray  # optional: only a scale-out run needs it
    except ImportError:
        raise InputError(
            "--workers > 1 and --ray-address need Ray, which is not installed.", "pip install ray"
        ) from None
    return ray


def check(workers: int, address: str | None) -> None:
    """Validate the scale-out options before any model loads."""
    if workers < 1:
        raise InputError(f"--workers {workers} must be at least 1.", "use 1 (in-process) or the number of replicas.")
    if workers > 1 or address:
        require_ray()


@contextmanager
def session(workers: int = 1, address: str | None = None, threads: int = 0) -> Iterator[None]:
    """Scale ``map_shards`` out to ``workers`` Ray actors within the block (see the module docstring).
    A Ray session already initialised (a test's, a notebook's) is used as it is and left running,
    and so are its actors, for the next block with the same ``workers`` and ``threads``."""
    global _current
    check(workers, address)
    if workers <= 1 and not address:
        yield
        return
    ray = require_ray()
    started = not ray.is_initialized()
    if started:
        _init(ray, workers, address)
    shares = max(1, (threads or os.cpu_count() or 1) // workers)
    pool = _Pool(ray, workers, shares) if started else _kept.setdefault((workers, shares), _Pool(ray, workers, shares))
    _current = pool
    try:
        yield
    finally:
        _current = None
        if started:
            pool.close()
            ray.shutdown()


def _init(ray, workers: int, address: str | None) -> None:
    """Connect to ``address``, shipping the ``core`` package, or start a local cluster of ``workers`` CPUs."""
    if address:
        ray.init(address=address, runtime_env={"py_modules": [str(PROJECT / "core")]}, log_to_driver=False)
        return
    path = os.pathsep.join(p for p in (str(PROJECT), os.environ.get("PYTHONPATH")) if p)
    ray.init(
        num_cpus=workers,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"PYTHONPATH": path}},
    )


def active() -> bool:
    return _current is not None


def map_shards(
    work: Callable[[Any, Any, Any], Any],
    shards: Sequence[Any],
    shared: Any = None,
    local: Any = None,
    load: Callable[[], Any] | None = None,
    progress: Progress | None = None,
    report: Report | None = None,
) -> list[Any]:
    """``[work(replica, shared, shard) for shard in shards]``, in shard order.

    In-process (no session, or state that only exists here: ``local`` without ``load``) the
    replica is ``local`` (else ``load()``), shards run in order and each is reported as it ends.
    In a session each actor's replica is ``load()`` (None without ``load``), built once per actor.
    ``report(i, result)`` gives the progress message and partial result of shard ``i``; it may raise.
    """
    progress = progress or Progress()
    if _current is None or (local is not None and load is None):
        replica = local if local is not None or load is None else load()
        out = []
        for i, shard in enumerate(shards):
            out.append(work(replica, shared, shard))
            _report(progress, report, i, out[-1], len(out), len(shards))
        return out
    return _current.map(work, list(shards), shared, load, progress, report)


def _report(progress: Progress, report: Report | None, i: int, result: Any, done: int, total: int) -> None:
    message, partial = report(i, result) if report else (f"shard {i + 1}/{total}", None)
    progress.update(done / total, message, partial)


def _load_key(load: Callable[[], Any] | None) -> str:
    """Equal loads (the same function and arguments) share one replica on an actor."""
    return hashlib.sha256(pickle.dumps(load)).hexdigest()


def _driver_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k.startswith(ENV_PREFIXES)}


def ray_gpu_ids() -> list:
    """The GPUs Ray gave this actor (none outside an actor)."""
    import ray  # in a Ray worker process

    return list(ray.get_gpu_ids())


class Replica:
    """A Ray actor's state: its torch thread share and one replica; each shard runs in the
    driver's environment of the moment (its cache folder, offline flags)."""

    def __init__(self, threads: int):
        import torch  # in the Ray worker process, which starts without the engine

        torch.set_num_threads(threads)
        if ray_gpu_ids():
            os.environ[GPU_ACTOR] = "1"
        self.key: str | None = None
        self.replica: Any = None

    def run(self, env: dict[str, str], key: str, load, work, shared, shard):
        os.environ.update(env)
        if key != self.key:
            self.replica, self.key = None, None  # the old replica goes before the new one loads
            self.replica, self.key = (load() if load is not None else None), key
        return work(self.replica, shared, shard)


class _Pool:
    """``workers`` actors, started on first use and killed on close or on any failure."""

    def __init__(self, ray, workers: int, threads: int):
        self.ray, self.workers, self.threads = ray, workers, threads
        self.actors: list = []

    def _start(self) -> list:
        if not self.actors:
            ray = self.ray
            gpus = ray.cluster_resources().get("GPU", 0) >= self.workers
            options = {"num_gpus": 1} if gpus else {"num_cpus": 1}
            actor = ray.remote(**options)(Replica)
            self.actors = [actor.remote(self.threads) for _ in range(self.workers)]
        return self.actors

    def map(self, work, shards: list, shared, load, progress: Progress, report: Report | None) -> list:
        ray, key, env = self.ray, _load_key(load), _driver_env()
        try:
            actors, shared_ref = self._start(), ray.put(shared)
            todo, results, running = list(range(len(shards))), [None] * len(shards), {}
            idle = list(actors)
            while todo or running:
                while todo and idle:
                    i, actor = todo.pop(0), idle.pop(0)
                    running[actor.run.remote(env, key, load, work, shared_ref, shards[i])] = (i, actor)
                ready, _ = ray.wait(list(running), num_returns=1, timeout=WAIT_S)
                if progress.cancel is not None and progress.cancel.is_set():
                    raise Cancelled("cancelled by request")
                for ref in ready:
                    i, actor = running.pop(ref)
                    results[i] = self._get(ref, i)
                    idle.append(actor)
                    _report(progress, report, i, results[i], len(shards) - len(todo) - len(running), len(shards))
            return results
        except BaseException:
            self.close()
            raise

    def _get(self, ref, i: int) -> Any:
        """One shard's result; a worker's error as one line (the project's own errors as they are)."""
        ray = self.ray
        try:
            return ray.get(ref)
        except ray.exceptions.RayTaskError as err:
            cause = getattr(err, "cause", None)
            if isinstance(cause, (InputError, Cancelled)):
                raise cause from None
            line = (str(cause) if cause is not None else str(err)).strip().splitlines() or [""]
            name = type(cause).__name__ if cause is not None else "error"
            raise InputError(
                f"A Ray worker failed on shard {i + 1}: {name}: {line[0][:200]}",
                "run without --workers to see the full error, or check the Ray cluster.",
            ) from None
        except ray.exceptions.RayError as err:
            first = (str(err).strip().splitlines() or [""])[0][:200]
            raise InputError(
                f"A Ray worker was lost on shard {i + 1}: {type(err).__name__}: {first}",
                "check the cluster's memory and logs, or run with fewer --workers.",
            ) from None

    def close(self) -> None:
        for actor in self.actors:
            self.ray.kill(actor)
        self.actors = []
