"""Hugging Face hub models: resolve an id (and revision) to its snapshot folder in the HF cache,
downloading only configs, tokenizers and safetensors weights when online, and name that snapshot
by its commit hash, so a fingerprint changes when the repository does.

``HF_HUB_CACHE`` and ``HF_HUB_OFFLINE`` are read at call time (huggingface_hub reads them once,
at import), so a test or a job can point at another cache.
"""

from __future__ import annotations

import os
import re
from functools import lru_cache
from pathlib import Path

from huggingface_hub import snapshot_download
from huggingface_hub.errors import HfHubHTTPError, HFValidationError, LocalEntryNotFoundError

from core.base.errors import InputError

# What a model needs: configs, tokenizer files, chat template, safetensors weights (never pickles).
HUB_FILES = ("*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken")
SNAPSHOT = re.compile(r"models--(?P<org>[^/]+?)--(?P<name>[^/]+)/snapshots/(?P<commit>[0-9a-f]{40})$")


def looks_like_hub_id(name: str) -> bool:
    """``org/name`` that is not a local path: absolute, ``.``, ``~`` or existing paths never are."""
    return (
        not Path(name).expanduser().exists()
        and name.count("/") == 1
        and not name.startswith((".", "/", "~"))
        and all(part and re.fullmatch(r"[\w.-]+", part) for part in name.split("/"))
    )


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE")


def _cache() -> str | None:
    return os.environ.get("HF_HUB_CACHE") or None


def hub_snapshot(repo_id: str, revision: str | None = None, trust_remote_code: bool = False) -> Path:
    """The local snapshot folder of ``repo_id`` at ``revision`` (a branch, tag or commit; default
    main): online, the hub resolves the revision and missing files are fetched; offline (or when
    the hub cannot be reached), the cache's ``refs/<revision>`` names the snapshot."""
    cache, offline = _cache(), _offline()
    if offline:  # cheap and must see a changed ref: never memoised
        return _snapshot(repo_id, revision, trust_remote_code, cache, True)
    return _online_snapshot(repo_id, revision, trust_remote_code, cache)


@lru_cache(maxsize=64)
def _online_snapshot(repo_id: str, revision: str | None, trust_remote_code: bool, cache: str | None) -> Path:
    return _snapshot(repo_id, revision, trust_remote_code, cache, False)


def _snapshot(repo_id: str, revision: str | None, trust_remote_code: bool, cache: str | None, offline: bool) -> Path:
    patterns = [*HUB_FILES, "*.py"] if trust_remote_code else list(HUB_FILES)
    at = f" at revision '{revision}'" if revision else ""
    try:
        folder = snapshot_download(
            repo_id, revision=revision, cache_dir=cache, local_files_only=offline, allow_patterns=patterns
        )
    except (LocalEntryNotFoundError, HfHubHTTPError, HFValidationError, OSError, ValueError) as err:
        where = "in the local Hugging Face cache (offline)" if offline else "on the Hugging Face hub or in its cache"
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise InputError(
            f"'{repo_id}'{at} is not a local path and was not found {where}: {first}",
            "check the id and revision, or pass an existing local directory (paths start with / or ./).",
        ) from None
    return Path(folder)


def hub_identity(path: str | Path) -> str | None:
    """``hub:org/name@commit`` when ``path`` is a snapshot folder of the HF cache, else None.
    A snapshot's files are fixed by its commit, so the commit names its content."""
    match = SNAPSHOT.search(Path(path).as_posix().rstrip("/"))
    if match is None:
        return None
    return f"hub:{match['org']}/{match['name']}@{match['commit']}"
