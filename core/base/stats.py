"""Uncertainty for every number the tool prints: Wilson intervals on rates, bootstrap intervals
on aggregate scores, exact McNemar tests for paired comparisons (all through scipy)."""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
from scipy import stats

CONFIDENCE = 0.95


def rate_with_interval(flags: Sequence[bool], confidence: float = CONFIDENCE) -> dict[str, float | int]:
    """Percentage of true ``flags`` with its Wilson score interval (in percent) and n.

    Wilson rather than the normal approximation: it stays inside [0, 100] and is honest at the
    0% / 100% rates a small model often shows (scipy's ``binomtest(...).proportion_ci``)."""
    n, k = len(flags), int(sum(bool(f) for f in flags))
    if n == 0:
        return {"rate": float("nan"), "ci_low": float("nan"), "ci_high": float("nan"), "n": 0}
    ci = stats.binomtest(k, n).proportion_ci(confidence_level=confidence, method="wilson")
    return {"rate": 100.0 * k / n, "ci_low": float(100.0 * ci.low), "ci_high": float(100.0 * ci.high), "n": n}


def bootstrap_interval(
    samples: Sequence[float] | np.ndarray,
    statistic: Callable[[np.ndarray], float] = np.mean,
    confidence: float = CONFIDENCE,
    resamples: int = 2000,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile-bootstrap interval of ``statistic`` over the first axis of ``samples`` (seeded)."""
    data = np.asarray(samples, dtype=float)
    if len(data) < 2 or np.all(data == data[0]):
        value = float(statistic(data))
        return value, value
    res = stats.bootstrap(
        (data,),
        lambda x, axis=-1: np.apply_along_axis(statistic, axis, x),
        confidence_level=confidence,
        n_resamples=resamples,
        method="percentile",
        random_state=np.random.default_rng(seed),
        vectorized=True,
    )
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def mcnemar(a: Sequence[bool], b: Sequence[bool]) -> dict[str, float | int]:
    """Exact McNemar test of two paired outcome vectors on the same items: the two-sided binomial
    p-value of the discordant pairs (a true, b false) vs (a false, b true)."""
    if len(a) != len(b):
        raise ValueError(f"paired outcomes differ in length: {len(a)} vs {len(b)}")
    only_a = sum(1 for x, y in zip(a, b) if x and not y)
    only_b = sum(1 for x, y in zip(a, b) if y and not x)
    n = only_a + only_b
    p = 1.0 if n == 0 else float(stats.binomtest(only_a, n, 0.5).pvalue)
    return {"only_a": only_a, "only_b": only_b, "p_value": p}
