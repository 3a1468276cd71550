"""Command line: ``python -m core <command> [--json]``, the terminal face of ``core.service.commands``.

Progress goes to stderr; with ``--json`` the last line of stdout is one JSON object with named
numbers. Bad input prints one line ``error: ... Fix: ...`` and exits with code 2; a cache that cannot
be written (disk full) prints one such line and exits with 1.
"""

from __future__ import annotations

import sqlite3
import sys

from core.base.errors import Cancelled, InputError, write_failure
from core.present.text import print_answer
from core.service.commands import execute


def main(argv: list[str] | None = None, cached_answers: bool = False) -> int:
    """Run one command; ``cached_answers`` (set by ``python -m core``) answers and stores through
    the answer cache (``core.service.answer_cache``)."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        result = execute(argv, cached_answers=cached_answers)
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except (Cancelled, KeyboardInterrupt):
        print("error: cancelled; nothing was written.", file=sys.stderr)
        return 130
    except (OSError, sqlite3.OperationalError) as err:
        if (line := write_failure(err)) is None:
            raise
        print(f"error: {line}", file=sys.stderr)
        return 1
    print_answer(result, as_json="--json" in argv)
    return 0
