"""Two jobs side by side on this machine: the slowdown against one job alone, with the torch
threads the job runner gives each job and with every job taking every core (issue 15, item 5).

Each job is a real command line, ``python -m core correlate --n N --null-seeds 0 --json --threads T``
on the demo world, in its own process with its own empty results cache (the world and converted
models linked from the project's cache), so nothing is answered from a cache. Scenarios:

- alone: one job with ``--threads <cores>`` (the reference time);
- shared: two jobs at once, each with ``JobSettings(max_running=2).threads_per_job()`` threads
  (what ``core.service.jobs`` gives each job when two may run: the cores split evenly);
- greedy: two jobs at once, each with ``--threads <cores>`` (every job takes every core, the
  behaviour before the setting: 2 x cores threads on cores cores);
- queued: the dashboard's default (``SAFETY_MAX_JOBS=1``): the second job waits for the first,
  so the pair takes twice the time of one; shown as the arithmetic 2 x alone, not run.

Slowdown = the time until both jobs of a pair are done / one job alone. Target (issue 15):
<= 2.2x for two jobs on 2 cores. Run it on an idle machine; the load average is printed before
each scenario, and a scenario run beside other work says nothing.

    python bench/threads.py                # ~5 minutes on 2 cores, n=30, median of 2
    python bench/threads.py --n 60 --reps 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core.base.paths import cache_dir  # noqa: E402
from core.service.jobs import JobSettings  # noqa: E402


def fresh_cache(parent: Path, name: str) -> Path:
    """An empty results cache that sees the project's built worlds and converted models."""
    d = parent / name
    d.mkdir()
    for shared in ("worlds", "models"):
        if (cache_dir() / shared).exists():
            (d / shared).symlink_to((cache_dir() / shared).resolve())
    return d


def start(n: int, threads: int, cache: Path) -> subprocess.Popen:
    argv = [sys.executable, "-m", "core", "correlate", "--n", str(n), "--null-seeds", "0", "--json"]
    env = {**os.environ, "SAFETY_CACHE_DIR": str(cache), "OMP_NUM_THREADS": str(threads)}
    return subprocess.Popen(
        [*argv, "--threads", str(threads)], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )


def together(n: int, threads: list[int], tmp: Path, tag: str) -> dict:
    """Start one job per entry of ``threads`` at once; wall time until all are done, and each one's."""
    t0 = time.perf_counter()
    procs = [start(n, t, fresh_cache(tmp, f"{tag}-{i}")) for i, t in enumerate(threads)]
    each = []
    for p in procs:
        out, _ = p.communicate()
        if p.returncode != 0:
            raise SystemExit(f"a job failed (exit {p.returncode}); is the demo world built? (python -m core world)")
        each.append(time.perf_counter() - t0)
        json.loads(out)  # a complete answer, not a partial one
    return {"all_s": max(each), "each_s": each}


def load() -> float:
    return os.getloadavg()[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=30, help="examples per set in each job (default 30)")
    ap.add_argument("--reps", type=int, default=2, help="repetitions of each scenario, median (default 2)")
    args = ap.parse_args()
    cores = os.cpu_count() or 1
    shared = JobSettings(max_running=2).threads_per_job()
    scenarios = {"alone": [cores], "shared": [shared, shared], "greedy": [cores, cores]}
    out: dict = {"cores": cores, "n": args.n, "reps": args.reps, "threads": {k: v for k, v in scenarios.items()}}
    with tempfile.TemporaryDirectory() as tmp:
        together(args.n, [cores], Path(tmp), "warm-up")  # page cache of the model files, compiled kernels
        for rep in range(args.reps):
            for name, threads in scenarios.items():
                before = load()
                run = together(args.n, threads, Path(tmp), f"{name}-{rep}")
                out.setdefault(name, []).append({**run, "load_before": before})
                print(f"{name} (threads {threads}), rep {rep + 1}: {run['all_s']:.1f} s; load before {before:.2f}")
    alone = statistics.median(r["all_s"] for r in out["alone"])
    out["alone_s"] = alone
    out["slowdown"] = {name: statistics.median(r["all_s"] for r in out[name]) / alone for name in ("shared", "greedy")}
    out["slowdown"]["queued"] = 2.0
    print(f"one job alone ({cores} threads): {alone:.1f} s")
    for name, ratio in out["slowdown"].items():
        verdict = "meets" if ratio <= 2.2 else "misses"
        print(f"two jobs, {name}: {ratio:.2f}x one job alone ({verdict} the <= 2.2x target)")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
