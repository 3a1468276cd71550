"""Small tensor helpers every layer shares: one cosine, one way to cut a sequence into batches."""

from __future__ import annotations

from typing import Iterable, Mapping, Sequence, TypeVar

import numpy as np
import torch

T = TypeVar("T")


def cosine(a: torch.Tensor | Mapping[str, torch.Tensor], b: torch.Tensor | Mapping[str, torch.Tensor]) -> float:
    """Cosine of two vectors, each a tensor or a dict of tensors (a direction over named
    weights, flattened and concatenated in key order), accumulated in float64, one pair of tensors at a time."""
    pairs = ((a[k], b[k]) for k in a) if isinstance(a, Mapping) else [(a, b)]
    dot = na = nb = 0.0  # one pass, one pair at a time (lazy directions hold one tensor each)
    for x, y in pairs:
        dot += float((x.double() * y.double().to(x.device)).sum())
        na += float(x.double().pow(2).sum())
        nb += float(y.double().pow(2).sum())
    na, nb = na**0.5, nb**0.5
    return dot / (na * nb)


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
