"""A cache of whole CLI answers, consulted before torch is imported.

Every analysis below the CLI is already memoised, but importing torch and transformers alone
takes ~5 s on 2 cores; a repeat of the same command should answer in well under a second. The
key is the command line itself (less the flags that only change how it prints or how many
threads and Ray workers it uses) plus a stat signature (path, size, mtime) of every local file or folder it
names, of the demo world it uses, and a digest of the engine's source, so a rebuilt world, an
edited adapter or a code change misses. Keying the raw command line, not a parsed one, keeps this
module free of the registries (which import torch); two spellings of the same request are two
entries. A Hub id, a path that does not exist, a custom judge (whose code may change) or
``--rebuild`` is never answered from here.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from core.base.cache import MISSING, results_store, stable_hash, stored
from core.base.options import add_arguments
from core.base.paths import cache_dir
from core.world.choice import WorldChoice

PRINT_FLAGS = ("--json", "--no-json")  # change how an answer prints, never the answer
# the same (how, not what, is computed): their value is dropped with them
VALUE_FLAGS = ("--threads", "--workers", "--ray-address", "--direction-memory")
NEVER = ("--judge", "--rebuild")
ENGINE = Path(__file__).resolve().parents[1]  # core/
PRESENTATION = ("present", "service")  # draw, run or cache answers; never change one


MAX_SIGNED_FILES = 2000  # a model or data folder has far fewer; a larger tree is not answered from cache


def _tree_signature(path: Path) -> list | None:
    """(path, size, mtime) of every file under ``path``; None past ``MAX_SIGNED_FILES`` files, so a
    mistaken ``--base /usr`` costs one bounded walk, not a stat of the whole tree each time."""
    if path.is_file():
        return [(str(path), path.stat().st_size, path.stat().st_mtime_ns)]
    files = []
    for p in path.rglob("*"):
        if len(files) > MAX_SIGNED_FILES:
            return None
        if p.is_file():
            files.append(p)
    return [(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(files)]


def _demo_world_signature(seed: int, harmful_examples: int) -> list:
    """(dir, stat of every file) of the built demo worlds with this seed and injection count:
    building, rebuilding or damaging that world changes the key; building another world does not."""
    out = []
    for info in sorted((cache_dir() / "worlds").glob("*/world.json")):
        try:
            meta = json.loads(info.read_text())
        except (OSError, ValueError):
            continue
        if meta.get("seed") == seed and meta.get("injected_harmful_examples") == harmful_examples:
            out.append((info.parent.name, _tree_signature(info.parent)))  # every file: a damaged one misses
    return out


def _source_digest() -> str:
    """Digest of every engine source file under ``core/`` except the presentation and service code."""
    h = hashlib.sha256()
    for p in sorted(ENGINE.rglob("*.py")):
        if p.relative_to(ENGINE).parts[0] not in PRESENTATION:
            h.update(str(p.relative_to(ENGINE)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()[:16]


def _split(argv: list[str]) -> list[tuple[str, str | None]]:
    """``argv`` as (token, value) pairs: ``--opt value`` and ``--opt=value`` both give one pair."""
    out, i = [], 0
    while i < len(argv):
        tok = argv[i]
        if tok.startswith("--") and "=" in tok:
            name, value = tok.split("=", 1)
            out.append((name, value))
        elif tok.startswith("--") and i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            out.append((tok, argv[i + 1]))
            i += 1
        else:
            out.append((tok, None))
        i += 1
    return out


def _world(argv: list[str]) -> WorldChoice:
    p = argparse.ArgumentParser(add_help=False)
    add_arguments(p, WorldChoice)
    known, _ = p.parse_known_args(argv)
    return WorldChoice(known.seed, known.harmful_examples)


def answer_key(argv: list[str]) -> str | None:
    """The cache key of this command line, or None when it cannot be answered from cache."""
    try:
        pairs = _split(list(argv))
        world = _world(list(argv))
    except SystemExit:  # a malformed --seed: let the real parser say so
        return None
    kept = [(t, v) for t, v in pairs if t not in PRINT_FLAGS + VALUE_FLAGS]
    names = {t for t, _ in kept}
    if names & set(NEVER):
        return None
    inputs = {}
    for name, value in kept:
        if value is None or not (name in ("--base", "--finetuned") or name.endswith("-file")):
            continue
        if not os.path.exists(value) or (signature := _tree_signature(Path(value))) is None:
            return None
        inputs[name] = signature
    if "--base" not in names:
        inputs["world"] = _demo_world_signature(world.seed, world.harmful_examples)
    return "cli-answer:" + stable_hash(kept, inputs, _source_digest())


def lookup(key: str | None) -> dict[str, Any] | None:
    if key is None:
        return None
    with results_store() as store:
        value = stored(store, key)
    return None if value is MISSING else value


def store(key: str | None, answer: dict[str, Any]) -> None:
    if key is not None:
        with results_store() as s, contextlib.suppress(TypeError):  # not JSON: answered, not cached
            s[key] = answer
