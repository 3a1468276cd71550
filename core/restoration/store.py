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
    path = runs_dir() / rid / "record.json"
    return json.loads(path.read_text()) if path.exists() else None


def list_runs() -> list[dict]:
    """Every stored run record, newest first. A run still marked running whose process is gone
    (killed, machine restarted) reads as ``interrupted``; restarting it recomputes it."""
    if not runs_dir().is_dir():
        return []
    records = [json.loads(p.read_text()) for p in runs_dir().glob("*/record.json")]
    for r in records:
        if r["status"] == "running" and not process_alive(r.get("pid")):
            r["status"] = "interrupted"
    return sorted(records, key=lambda r: r.get("started", 0), reverse=True)


def trajectory(record: dict) -> np.ndarray | None:
    """The parameter snapshots (steps x P) a run stored, if any."""
    path = runs_dir() / record["id"] / "restored" / "trajectory.npy"
    return np.load(path) if path.exists() else None
