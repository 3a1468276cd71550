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
import pickle
import shutil
import sqlite3
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator

import diskcache

from core.base.paths import cache_dir
from core.base.process import process_alive


def stable_hash(*parts: Any, length: int = 16) -> str:
    """Hex digest of JSON-serialisable parts; dataclasses should be passed as ``asdict``."""
    blob = json.dumps(parts, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


def results_store() -> diskcache.Cache:
    """The shared diskcache of analysis results (safe across processes). A damaged database is
    moved aside (``results.damaged-<time>``) and a fresh one opened: results are recomputable."""
    root = cache_dir() / "results"
    try:
        return diskcache.Cache(str(root), size_limit=2**34)
    except sqlite3.DatabaseError:
        root.replace(root.with_name(f"results.damaged-{int(time.time())}"))
        return diskcache.Cache(str(root), size_limit=2**34)


MISSING = object()
DAMAGED = (
    pickle.UnpicklingError,
    EOFError,
    ValueError,
    TypeError,
    AttributeError,
    ImportError,
    OSError,
    sqlite3.DatabaseError,
)  # what reading a truncated or corrupt entry raises


def stored(store: diskcache.Cache, key: str) -> Any:
    """``store[key]``, or ``MISSING`` when absent or unreadable (a damaged entry is deleted, so
    the caller recomputes it instead of crashing or serving garbage)."""
    try:
        return store.get(key, default=MISSING)
    except DAMAGED:
        with contextlib.suppress(*DAMAGED):
            del store[key]
        return MISSING


def memoize(namespace: str, key: dict[str, Any], compute: Callable[[], Any], refresh: bool = False) -> Any:
    """Return the stored result for (namespace, key) or compute, store and return it.

    ``compute`` raising (bad input, ``Cancelled``) stores nothing; a damaged stored entry is
    recomputed.
    """
    full_key = f"{namespace}:{stable_hash(key)}"
    if not refresh:
        with results_store() as store:
            value = stored(store, full_key)
        if value is not MISSING:
            return value
    value = compute()
    with results_store() as store:
        store[full_key] = value
    return value


@contextlib.contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield a temporary sibling directory; rename it to ``final`` only if the block succeeds."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".tmp-{final.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
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


def clean_orphans(root: Path | None = None) -> list[Path]:
    """Remove ``atomic_dir`` temporaries (two levels under the cache) whose writing process is
    gone, e.g. after a kill -9 during a world build; returns what was removed."""
    root = root or cache_dir()
    removed = []
    for tmp in [*root.glob(".tmp-*"), *root.glob("*/.tmp-*"), *root.glob("*/*/.tmp-*")]:
        pid = tmp.name.rsplit("-", 2)[-2] if tmp.name.count("-") >= 3 else ""
        if tmp.is_dir() and pid.isdigit() and not process_alive(int(pid)):
            shutil.rmtree(tmp, ignore_errors=True)
            removed.append(tmp)
    return removed
