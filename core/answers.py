"""A cache of whole CLI answers, consulted before torch is imported.

Every analysis below the CLI is already memoised, but importing torch and transformers alone
takes ~5 s on 2 cores; a repeat of the same command should answer in well under a second. The
key is the command line plus a stat signature (path, size, mtime) of every local input it names,
of the demo world it uses, and a digest of the engine's source, so a rebuilt world, an edited
adapter or a code change misses. A Hub id or a custom judge (whose code may change) is never
answered from here.
"""
from __future__ import annotations

import argparse
import hashlib
import json
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


def _demo_world_signature(seed: int, harmful_examples: int | None) -> list:
    """(dir, mtime) of the built demo worlds with this seed and injection count: building or
    rebuilding that world changes the key; building another world does not."""
    out = []
    for info in sorted((cache_dir() / "worlds").glob("*/world.json")):
        try:
            meta = json.loads(info.read_text())
        except (OSError, ValueError):
            continue
        if meta.get("seed") == seed and meta.get("injected_harmful_examples") == harmful_examples:
            out.append((info.parent.name, info.stat().st_mtime_ns))
    return out


PRESENTATION = ("figures.py", "export.py", "jobs.py")  # draw or run answers; never change one


def _source_digest() -> str:
    h = hashlib.sha256()
    for p in sorted(Path(__file__).parent.glob("*.py")):
        if p.name not in PRESENTATION:
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
    if opts.get("base") is None and "seed" in opts:
        inputs["world"] = _demo_world_signature(opts["seed"], opts.get("harmful_examples"))
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
