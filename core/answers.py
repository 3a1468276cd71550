"""A cache of whole CLI answers, consulted before torch is imported.

Every analysis below the CLI is already memoised, but importing torch and transformers alone
takes ~5 s on 2 cores; a repeat of the same command should answer in well under a second. The
key is the command line plus a stat signature (path, size, mtime) of every local input it names,
of the demo worlds on disk, and a digest of the engine's source, so a rebuilt world, an edited
adapter or a code change misses. A Hub id or a custom judge (whose code may change) is never
answered from here.
"""
from __future__ import annotations

import argparse
import hashlib
import os
from pathlib import Path
from typing import Any

from core.cache import results_store, stable_hash
from core.paths import cache_dir

PATH_ARGS = ("base", "finetuned", "prompts_file", "harmful_file", "task_file", "general_file", "benign_file")
IGNORED_ARGS = ("json", "threads", "rebuild", "progress_callback", "cancel")


def _tree_signature(path: Path) -> list:
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return [(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files]


def _source_digest() -> str:
    h = hashlib.sha256()
    for p in sorted(Path(__file__).parent.glob("*.py")):
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


def answer_key(args: argparse.Namespace) -> str | None:
    """The cache key of this command line, or None when it cannot be answered from cache."""
    opts = {k: v for k, v in vars(args).items() if k not in IGNORED_ARGS}
    if opts.get("judge") or getattr(args, "rebuild", False):
        return None
    inputs = {}
    for name in PATH_ARGS:
        value = opts.get(name)
        if value is None:
            continue
        if not os.path.exists(value):
            return None
        inputs[name] = _tree_signature(Path(value))
    worlds = cache_dir() / "worlds"
    inputs["worlds"] = sorted((p.name, p.stat().st_mtime_ns) for p in worlds.iterdir()) if worlds.is_dir() else []
    return "cli-answer:" + stable_hash(opts, inputs, _source_digest())


def lookup(key: str | None) -> dict[str, Any] | None:
    if key is None:
        return None
    with results_store() as store:
        return store.get(key)


def store(key: str | None, answer: dict[str, Any]) -> None:
    if key is not None:
        with results_store() as s:
            s[key] = answer
