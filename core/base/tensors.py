"""Small tensor helpers every layer shares: one cosine (and its float64 dot product), one way to cut a
sequence into batches."""

from __future__ import annotations

from typing import Iterable, Mapping, Sequence, TypeVar

import numpy as np
import torch

T = TypeVar("T")


CHUNK = 1 << 22  # elements per float64 temporary (32 MiB), whatever the tensor's size


def dot64(x: torch.Tensor, y: torch.Tensor | None = None) -> float:
    """Sum of x * y (of x * x without ``y``) accumulated in float64 over chunks of the flattened
    tensors: no float64 copy of a whole tensor (a 49k x 2k embedding's would be 0.8 GB, issue 13)."""
    x = x.detach().reshape(-1)
    y = x if y is None else y.detach().reshape(-1).to(x.device)
    total = 0.0
    for start in range(0, x.numel(), CHUNK):
        a = x[start : start + CHUNK].double()
        total += float(a @ (a if y is x else y[start : start + CHUNK].double()))
    return total


def cosine(a: torch.Tensor | Mapping[str, torch.Tensor], b: torch.Tensor | Mapping[str, torch.Tensor]) -> float:
    """Cosine of two vectors, each a tensor or a dict of tensors (a direction over named
    weights, flattened and concatenated in key order), accumulated in float64, one pair of tensors at a time."""
    pairs = ((a[k], b[k]) for k in a) if isinstance(a, Mapping) else [(a, b)]
    dot = na = nb = 0.0  # one pass, one pair at a time (lazy directions hold one tensor each)
    for x, y in pairs:
        dot += dot64(x, y)
        na += dot64(x)
        nb += dot64(y)
    return dot / (na**0.5 * nb**0.5)


def chunks(items: Sequence[T], size: int) -> list[Sequence[T]]:
    """``items`` cut into consecutive batches of ``size`` (the last may be shorter)."""
    return [items[i : i + size] for i in range(0, len(items), size)]


def to_host(t: torch.Tensor, dtype: torch.dtype = torch.float32) -> np.ndarray:
    """The one device-to-host transfer of the engine: a detached copy as a numpy array (fp32 by
    default), from any device. Code elsewhere never calls ``.numpy()`` on a tensor that may live
    on an accelerator (tests/test_device_agnostic.py checks the source)."""
    return t.detach().to(device="cpu", dtype=dtype).numpy()


def flat(tensors: Iterable[torch.Tensor], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Tensors flattened and concatenated in ``dtype`` on their (common) device."""
    return torch.cat([t.reshape(-1).to(dtype) for t in tensors])
