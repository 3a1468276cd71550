"""The on-disk store: results keyed by (fingerprints, parameters), and atomic directory writes.

Results go into a ``diskcache.Cache`` under ``cache/results`` whose values are JSON (``JSONDisk``:
numbers, strings, lists, dicts, with tagged tuples, bytes and numpy arrays), never pickles, so a
crafted row cannot run code when read. Large artefacts (converted models, adapters, the demo
world) go into directories written under a temporary name and renamed into place, so a crash or
cancel never leaves half a directory behind.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import json
import os
import pickle
import shutil
import sqlite3
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator

import diskcache
import numpy as np

from core.base.paths import cache_dir
from core.base.process import process_alive


def stable_hash(*parts: Any, length: int = 16) -> str:
    """Hex digest of JSON-serialisable parts; dataclasses should be passed as ``asdict``."""
    blob = json.dumps(parts, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


MAGIC = b"SDJ1"  # JSON values start with this; anything else in the store is not ours


class DamagedEntry(ValueError):
    """A stored row that is not a readable JSON value (torn write, foreign or crafted row)."""


def encode(value: Any) -> bytes:
    """``value`` as tagged JSON bytes. Dicts with string keys, lists, str, int, float (NaN and
    infinities included), bool and None are plain JSON; tuples, bytes, dicts with other keys and
    numpy arrays or scalars (numeric or bool dtypes) are tagged objects; anything else raises
    ``TypeError`` (it would need pickle)."""
    return MAGIC + json.dumps(_tag(value), separators=(",", ":")).encode()


def decode(blob: bytes) -> Any:
    """The value ``encode`` wrote; ``DamagedEntry`` for anything else."""
    if not isinstance(blob, bytes) or not blob.startswith(MAGIC):
        raise DamagedEntry("not a JSON results entry")
    try:
        return _untag(json.loads(blob[len(MAGIC) :]))
    except (ValueError, TypeError, KeyError, AttributeError) as err:
        raise DamagedEntry(f"unreadable results entry ({err})") from None


TAG = "__t__"


def _tag(v: Any) -> Any:
    if v is None or type(v) in (bool, int, float, str):
        return v
    if isinstance(v, (np.ndarray, np.generic)):
        arr = np.asarray(v)
        if arr.dtype.kind not in "biufc":
            raise TypeError(f"cannot store a numpy array of dtype {arr.dtype} as JSON")
        data = base64.b64encode(np.ascontiguousarray(arr).tobytes()).decode()
        scalar = isinstance(v, np.generic)
        return {TAG: "nd", "dtype": arr.dtype.str, "shape": list(arr.shape), "data": data, "scalar": scalar}
    if isinstance(v, list):
        return [_tag(x) for x in v]
    if isinstance(v, tuple):
        return {TAG: "tuple", "items": [_tag(x) for x in v]}
    if isinstance(v, bytes):
        return {TAG: "bytes", "data": base64.b64encode(v).decode()}
    if isinstance(v, dict):
        if all(type(k) is str for k in v) and TAG not in v:
            return {k: _tag(x) for k, x in v.items()}
        return {TAG: "dict", "items": [[_tag(k), _tag(x)] for k, x in v.items()]}
    for plain in (bool, int, float, str):  # subclasses (IntEnum, str enums): their plain value
        if isinstance(v, plain):
            return plain(v)
    raise TypeError(f"cannot store a {type(v).__name__} in the results store as JSON")


def _untag(v: Any) -> Any:
    if isinstance(v, list):
        return [_untag(x) for x in v]
    if not isinstance(v, dict):
        return v
    kind = v.get(TAG)
    if kind is None:
        return {k: _untag(x) for k, x in v.items()}
    if kind == "tuple":
        return tuple(_untag(x) for x in v["items"])
    if kind == "bytes":
        return base64.b64decode(v["data"])
    if kind == "dict":
        return {_hashable(_untag(k)): _untag(x) for k, x in v["items"]}
    if kind == "nd":
        dtype = np.dtype(v["dtype"])
        if dtype.kind not in "biufc":
            raise TypeError(f"dtype {dtype} is not stored as JSON")
        arr = np.frombuffer(base64.b64decode(v["data"]), dtype=dtype).reshape(v["shape"]).copy()
        return arr[()] if v.get("scalar") else arr
    raise TypeError(f"unknown tag {kind!r}")


def _hashable(k: Any) -> Any:
    return tuple(_hashable(x) for x in k) if isinstance(k, list) else k


class _PlainUnpickler(pickle.Unpickler):
    """Reads only pickles of plain data (dicts, lists, tuples, str, bytes, numbers, bool, None):
    every class or function a pickle names is refused, so no code can run."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"refused to load {module}.{name} from the results store")

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("refused a persistent id in the results store")


class JSONDisk(diskcache.Disk):
    """diskcache's storage of keys and values, with JSON values instead of pickles.

    Keys must be strings. Rows written before the JSON store (pickles) are still read, but only
    as plain data through ``_PlainUnpickler``: a row that names any class or function (every
    code-running pickle does) raises ``pickle.UnpicklingError`` and is treated as damaged. This
    keeps results computed before the change (hours of CPU) without trusting their bytes; the
    first read rewrites them as JSON (``stored``).
    """

    legacy_read = False  # set when the last fetch read a pickled row

    def put(self, key: Any) -> tuple[Any, bool]:
        if type(key) is not str:
            raise TypeError("results store keys are strings")
        return super().put(key)

    def get(self, key: Any, raw: bool) -> Any:
        if not raw:
            raise DamagedEntry("a pickled key in the results store")
        return super().get(key, raw)

    def store(self, value: Any, read: bool, key: Any = diskcache.core.UNKNOWN) -> tuple:
        if read:
            raise TypeError("the results store keeps JSON values, not files")
        return super().store(encode(value), False, key)

    def _write(self, full_path: str, iterator: Any, mode: str, encoding: str | None = None) -> int | None:
        """diskcache's value-file write; a failed one (disk full) leaves no partial file."""
        try:
            return super()._write(full_path, iterator, mode, encoding)
        except OSError:
            with contextlib.suppress(OSError):
                os.remove(full_path)
            raise

    def fetch(self, mode: int, filename: str | None, value: Any, read: bool) -> Any:
        self.legacy_read = False
        if read:
            raise TypeError("the results store keeps JSON values, not files")
        if mode == diskcache.core.MODE_PICKLE:
            blob = value if value is not None else Path(self._directory, filename).read_bytes()
            result = _PlainUnpickler(io.BytesIO(bytes(blob))).load()
            self.legacy_read = True
            return result
        if mode not in (diskcache.core.MODE_RAW, diskcache.core.MODE_BINARY):
            raise DamagedEntry(f"results store row of mode {mode}")
        blob = super().fetch(mode, filename, value, read)
        return decode(blob)


def results_store() -> diskcache.Cache:
    """The shared diskcache of analysis results (safe across processes), values as JSON
    (``JSONDisk``). A damaged database is moved aside (``results.damaged-<time>``) and a fresh
    one opened: results are recomputable."""
    root = cache_dir() / "results"
    try:
        return _opened(root)
    except sqlite3.OperationalError:  # full, locked, read-only: not damage, the caller reports it
        raise
    except sqlite3.DatabaseError:
        root.replace(root.with_name(f"results.damaged-{int(time.time())}"))
        return _opened(root)


def _opened(root: Path) -> diskcache.Cache:
    """The store at ``root``, probed with one keyed read: sqlite opens a damaged file lazily, so
    damage that opening misses ("database disk image is malformed") shows here, not mid-job."""
    store = diskcache.Cache(str(root), size_limit=2**34, disk=JSONDisk)
    try:
        store.get("results-store-probe")
    except sqlite3.DatabaseError:
        store.close()
        raise
    return store


MISSING = object()
DAMAGED = (
    pickle.UnpicklingError,
    EOFError,
    ValueError,
    LookupError,
    RecursionError,
    TypeError,
    AttributeError,
    ImportError,
    OSError,
    sqlite3.DatabaseError,
)  # what reading a truncated or corrupt entry raises


def stored(store: diskcache.Cache, key: str) -> Any:
    """``store[key]``, or ``MISSING`` when absent or unreadable. A damaged entry (torn, foreign,
    or a pickle naming code) is copied to ``cache/quarantine/`` and deleted, so the caller
    recomputes it instead of crashing or serving garbage; a plain-data pickle written before the
    JSON store is rewritten as JSON."""
    try:
        value = store.get(key, default=MISSING)
    except sqlite3.OperationalError:  # locked or full: the entry is not damaged
        raise
    except DAMAGED:
        quarantine_entry(store, key)
        return MISSING
    if value is not MISSING and getattr(store.disk, "legacy_read", False):
        with contextlib.suppress(TypeError, *DAMAGED):
            store[key] = value
    return value


def quarantine_entry(store: diskcache.Cache, key: str) -> None:
    """Copy a damaged row's raw bytes to ``cache/quarantine/`` (for a look, never read back) and
    delete it from the store."""
    with contextlib.suppress(*DAMAGED):
        row = store._sql("SELECT mode, filename, value FROM Cache WHERE key = ? AND raw = 1", (key,)).fetchone()
        if row is not None:
            mode, filename, value = row
            blob = bytes(value) if isinstance(value, (bytes, memoryview)) else str(value).encode()
            if filename:
                blob = Path(store.directory, filename).read_bytes()
            folder = cache_dir() / "quarantine"
            folder.mkdir(mode=0o700, exist_ok=True)
            name = hashlib.sha256(key.encode()).hexdigest()[:16]
            (folder / f"{key.split(':')[0]}-{name}-mode{mode}.damaged").write_bytes(blob)
    with contextlib.suppress(*DAMAGED):
        del store[key]


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
        try:
            store[full_key] = value
        except TypeError as err:  # a value JSON cannot hold: answer it, keep nothing (never pickle)
            print(f"note: {namespace} result not cached ({err})", file=sys.stderr)
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
    """Write a text file via a temporary name and rename: readers see the old or the new file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{path.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # a failed write (disk full) leaves the old file, no partial one


def clean_orphans(root: Path | None = None) -> list[Path]:
    """Remove ``atomic_dir`` and ``atomic_write_text`` temporaries (up to two levels under the
    cache) whose writing process is gone, e.g. after a kill -9 during a world build or a run
    record's write; returns what was removed."""
    root = root or cache_dir()
    removed = []
    for tmp in [*root.glob(".tmp-*"), *root.glob("*/.tmp-*"), *root.glob("*/*/.tmp-*")]:
        pid = tmp.name.rsplit("-", 2)[-2] if tmp.name.count("-") >= 3 else ""
        if not pid.isdigit() or process_alive(int(pid)):
            continue
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        removed.append(tmp)
    return removed
