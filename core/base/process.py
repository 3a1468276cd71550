"""Process helpers shared by the job runner and the run store (no torch, no core imports)."""

from __future__ import annotations

import os


def process_alive(pid: int | None) -> bool:
    """True while ``pid`` runs (a zombie, i.e. exited but not yet reaped, counts as gone)."""
    if not pid:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        try:
            os.kill(pid, 0)
        except OSError:
            return False
        return True
