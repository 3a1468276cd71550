"""Shared timing helper for the benchmark scripts."""

from __future__ import annotations

import time

import numpy as np


def median_time(fn, reps: int = 3) -> float:
    """Median wall time of ``fn()`` over ``reps`` calls, in seconds."""
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def interleaved_times(fns: dict, reps: int = 3) -> dict[str, float]:
    """Median wall time of each of ``fns`` (name -> callable), the calls taken in turn (a, b, a,
    b, ...) so that a change in the machine's load during the run touches every one alike."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    return {name: float(np.median(ts)) for name, ts in times.items()}
