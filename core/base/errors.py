"""One error type for bad input: a one-line message naming the input and the fix.

The CLI turns it into exit code 2 and the dashboard into an error box; nothing else
in the project should print a traceback for a user's mistake.
"""

from __future__ import annotations

import errno
import sqlite3


class InputError(Exception):
    """Bad user input. ``str(err)`` is a single line: what is wrong, with what, and how to fix it."""

    def __init__(self, what: str, fix: str):
        self.what = what.replace("\n", " ").strip()
        self.fix = fix.replace("\n", " ").strip()
        super().__init__(f"{self.what} Fix: {self.fix}")


class Cancelled(Exception):
    """Raised inside a computation when its progress callback asks it to stop."""


WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO)


def write_failure(err: BaseException) -> str | None:
    """One line for an error that means the cache could not be written (disk full, quota,
    read-only or permissions; sqlite's "database or disk is full"), else None."""
    if isinstance(err, OSError) and err.errno in WRITE_ERRNOS:
        reason = err.strerror or str(err)
    elif isinstance(err, sqlite3.OperationalError) and any(
        w in str(err) for w in ("full", "readonly", "disk I/O", "unable to open")
    ):
        reason = str(err)
    else:
        return None
    return (
        f"could not write to the cache ({reason}); nothing half-written was kept. "
        "Fix: free disk space or check permissions, then run it again."
    )
