"""Plain-text answers for the terminal: one JSON line, a table, or indented named numbers."""

from __future__ import annotations

import json
from typing import Any


def print_answer(result: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(result, default=str))
    elif "table" in result:
        _print_table(result["table"])
    else:
        _print_human(result)


def _print_human(result: dict[str, Any], indent: str = "") -> None:
    """Nested scalars as indented lines; long lists (figure data) are left to --json."""
    for key, value in result.items():
        if isinstance(value, list) and len(value) > 8:
            continue
        if isinstance(value, dict):
            print(f"{indent}{key}:")
            _print_human(value, indent + "  ")
        else:
            print(f"{indent}{key}: {round(value, 2) if isinstance(value, float) else value}")


def _print_table(rows: list[dict[str, Any]]) -> None:
    cols = list(rows[0])
    cells = [[f"{r[c]:.1f}" if isinstance(r[c], float) else str(r[c]) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    print("  ".join(c.ljust(w) for c, w in zip(cols, widths)))
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)))
