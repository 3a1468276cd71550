"""The on-disk store: results keyed by (fingerprints, parameters), and atomic directory writes.

Results go into a ``diskcache.Cache`` under ``cache/results``; large artefacts (converted
models, adapters, the demo world) go into directories written under a temporary name and
renamed into place, so a crash or cancel never leaves half a directory behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator

import diskcache

from core.base.paths import cache_dir


def stable_hash(*parts: Any, length: int = 16) -> str:
    """Hex digest of JSON-serialisable parts; dataclasses should be passed as ``asdict``."""
    blob = json.dumps(parts, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


def results_store() -> diskcache.Cache:
    """The shared diskcache of analysis results (safe across processes)."""
    return diskcache.Cache(str(cache_dir() / "results"), size_limit=2**34)


def memoize(namespace: str, key: dict[str, Any], compute: Callable[[], Any], refresh: bool = False) -> Any:
    """Return the stored result for (namespace, key) or compute, store and return it.

    ``compute`` raising (bad input, ``Cancelled``) stores nothing.
    """
    full_key = f"{namespace}:{stable_hash(key)}"
    with results_store() as store:
        if not refresh and full_key in store:
            return store[full_key]
    value = compute()
    with results_store() as store:
        store[full_key] = value
    return value


@contextlib.contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield a temporary sibling directory; rename it to ``final`` only if the block succeeds."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".tmp-{final.name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def atomic_write_text(path: Path, text: str) -> None:
    """Write a text file via a temporary name and rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{path.name}-{uuid.uuid4().hex[:8]}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
