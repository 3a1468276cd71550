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


COLUMN_NAMES = {
    "model": "Model",
    "harmful_rate": "Harmful rate (%)",
    "prefill_asr": "Prefill attack success (%)",
    "task_exact_match": "Task exact match (%)",
    "over_refusal": "Over-refusal (%)",
    "over_refusal_general": "Over-refusal, general (%)",
    "over_refusal_borderline": "Over-refusal, borderline (%)",
    "extra_harmful_rate": "Harmful rate, your prompts (%)",
    "extra_prefill_asr": "Prefill attack success, your prompts (%)",
    "general_capability": "General capability, mean acc (%)",
    "visage": "VISAGE",
    "wall_s": "Wall time (s)",
}


def readable(rows: list[dict]) -> list[dict]:
    """Table rows as a person reads them: column names in words with units, rates and times to one
    decimal, other numbers to 3 significant digits (machine-readable numbers stay in the JSON)."""
    return [{_column(k): _cell(_column(k), v) for k, v in row.items()} for row in rows]


def _column(key: str) -> str:
    return COLUMN_NAMES.get(key) or (key[:1].upper() + key[1:]).replace("_", " ")


def _cell(column: str, value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, float):
        return value
    if value != value:  # NaN
        return "n/a"
    return f"{value:.1f}" if column.endswith(("(%)", "(s)")) else f"{value:.3g}"
