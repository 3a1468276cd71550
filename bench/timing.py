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
