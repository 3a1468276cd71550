"""The restoration run store on disk, readable without torch (the dashboard lists runs from here).

``cache/runs/<id>/record.json`` is a run's record (rewritten after every step);
``cache/runs/<id>/restored/`` holds its restored adapter or model once it is done.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from core.base.paths import cache_dir
from core.base.process import process_alive


def runs_dir() -> Path:
    return cache_dir() / "runs"


def load_record(rid: str) -> dict | None:
    """The run's record, or None when there is none or it is damaged (then it is moved aside as
    ``record.json.damaged`` and the run counts as never run, so asking again recomputes it)."""
    return _read(runs_dir() / rid / "record.json")


def _read(path: Path) -> dict | None:
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text())
        if not isinstance(record, dict) or "id" not in record or "status" not in record:
            raise ValueError("not a run record")
        return record
    except (OSError, ValueError):
        quarantine(path)
        return None


def quarantine(path: Path) -> None:
    """Move a damaged file aside (``<name>.damaged``) so it is neither read again nor lost."""
    try:
        path.replace(path.with_name(path.name + ".damaged"))
    except OSError:
        pass


def list_runs() -> list[dict]:
    """Every stored run record, newest first. A run still marked running whose process is gone
    (killed, machine restarted) reads as ``interrupted``; restarting it recomputes it."""
    if not runs_dir().is_dir():
        return []
    records = [r for p in runs_dir().glob("*/record.json") if (r := _read(p)) is not None]
    for r in records:
        if r["status"] == "running" and not process_alive(r.get("pid")):
            r["status"] = "interrupted"
    return sorted(records, key=lambda r: r.get("started", 0), reverse=True)


def trajectory(record: dict) -> np.ndarray | None:
    """The parameter snapshots (steps x P) a run stored, if any."""
    path = runs_dir() / record["id"] / "restored" / "trajectory.npy"
    return np.load(path, allow_pickle=False) if path.exists() else None
