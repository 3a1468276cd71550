"""One error type for bad input: a one-line message naming the input and the fix.

The CLI turns it into exit code 2 and the dashboard into an error box; nothing else
in the project should print a traceback for a user's mistake.
"""

from __future__ import annotations


class InputError(Exception):
    """Bad user input. ``str(err)`` is a single line: what is wrong, with what, and how to fix it."""

    def __init__(self, what: str, fix: str):
        self.what = what.replace("\n", " ").strip()
        self.fix = fix.replace("\n", " ").strip()
        super().__init__(f"{self.what} Fix: {self.fix}")


class Cancelled(Exception):
    """Raised inside a computation when its progress callback asks it to stop."""
