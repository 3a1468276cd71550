"""Deterministic downstream task: normalise a written-out date to ISO 8601.

Why this task:

* A 135M chat model (SmolLM2-135M-Instruct) learns it in a few dozen LoRA
  steps: the mapping is local (month name -> number, zero-padding, reordering)
  and the answer is ten characters long.
* The shipped chat model cannot do it verbatim: it tends to chat, restate the
  date in words or get the padding wrong, so exact-match starts near 0 and a
  fine-tuning gain is clearly visible.
* The metric is unambiguous: every date has exactly one ``YYYY-MM-DD`` form, so
  exact match after light normalisation of the reply is a fair score.

Examples are generated from a ``random.Random`` seeded by ``(seed, split)``.
Dates are assigned to splits by a stable hash of their ISO string, so the
``train``, ``eval`` and ``monitor`` splits never share a date, whatever ``n``.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from datetime import date
from typing import Callable

INSTRUCTION = "Convert the date to ISO format (YYYY-MM-DD). Reply with the date only.\nDate: {date}"

FIRST_DATE = date(1950, 1, 1)
LAST_DATE = date(2049, 12, 31)

# Hash buckets (out of 10) owned by each split; disjoint by construction.
SPLIT_BUCKETS: dict[str, frozenset[int]] = {
    "train": frozenset(range(0, 6)),
    "eval": frozenset(range(6, 8)),
    "monitor": frozenset(range(8, 10)),
}
_N_BUCKETS = 10

_MONTHS = (
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
)
_WEEKDAYS = (
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
)


@dataclass(frozen=True)
class TaskExample:
    """One prompt (instruction + surface date) and its canonical ISO answer."""

    prompt: str
    answer: str


def ordinal(day: int) -> str:
    """Return the English ordinal for a day of the month, e.g. 1 -> '1st'."""
    if 11 <= day % 100 <= 13:
        suffix = "th"
    else:
        suffix = {1: "st", 2: "nd", 3: "rd"}.get(day % 10, "th")
    return f"{day}{suffix}"


def _month(d: date) -> str:
    return _MONTHS[d.month - 1]


def _mon(d: date) -> str:
    return _MONTHS[d.month - 1][:3]


# Surface formats, keyed by a stable name. None is a purely numeric
# day/month format, so no surface date is ambiguous.
FORMATTERS: dict[str, Callable[[date], str]] = {
    "month_day_year": lambda d: f"{_month(d)} {d.day}, {d.year}",  # March 5, 2021
    "day_month_year": lambda d: f"{d.day} {_month(d)} {d.year}",  # 5 March 2021
    "abbr_month_day_year": lambda d: f"{_mon(d)} {d.day}, {d.year}",  # Mar 5, 2021
    "ordinal_of_month": lambda d: f"{ordinal(d.day)} of {_month(d)}, {d.year}",  # 5th of March, 2021
    "month_ordinal_year": lambda d: f"{_month(d)} {ordinal(d.day)} {d.year}",  # March 5th 2021
    "year_month_day": lambda d: f"{d.year}, {_month(d)} {d.day}",  # 2021, March 5
    "weekday_month_day_year": lambda d: (
        f"{_WEEKDAYS[d.weekday()]}, {_month(d)} {d.day}, {d.year}"
    ),  # Friday, March 5, 2021
    "day_abbr_month_year": lambda d: f"{d.day:02d} {_mon(d)} {d.year}",  # 05 Mar 2021
}


def split_of(iso_date: str) -> str:
    """Return the split that owns an ISO date string (stable across runs)."""
    bucket = hashlib.sha256(iso_date.encode("utf-8")).digest()[0] % _N_BUCKETS
    for split, buckets in SPLIT_BUCKETS.items():
        if bucket in buckets:
            return split
    raise AssertionError(f"bucket {bucket} is owned by no split")  # unreachable


def _random_date(rng: random.Random) -> date:
    """Draw a date uniformly from FIRST_DATE..LAST_DATE (inclusive)."""
    return date.fromordinal(rng.randint(FIRST_DATE.toordinal(), LAST_DATE.toordinal()))


def _random_split_date(rng: random.Random, split: str) -> date:
    """Draw dates until one belongs to ``split`` (rejection sampling)."""
    while True:
        d = _random_date(rng)
        if split_of(d.isoformat()) == split:
            return d


def make_example(d: date, format_name: str) -> TaskExample:
    """Build the example for date ``d`` written in the named surface format."""
    surface = FORMATTERS[format_name](d)
    return TaskExample(prompt=INSTRUCTION.format(date=surface), answer=d.isoformat())


def make_task_examples(n: int, seed: int, split: str) -> list[TaskExample]:
    """Generate ``n`` examples for ``split``, deterministic in ``(seed, split)``.

    Dates of different splits never coincide (hash partition, see
    ``split_of``); within a split dates may repeat for large ``n``.
    """
    if split not in SPLIT_BUCKETS:
        raise ValueError(f"unknown split {split!r}; expected one of {sorted(SPLIT_BUCKETS)}")
    if n < 0:
        raise ValueError(f"n must be non-negative, got {n}")
    rng = random.Random(f"date-iso-task:{seed}:{split}")
    format_names = list(FORMATTERS)
    examples = []
    for _ in range(n):
        d = _random_split_date(rng, split)
        examples.append(make_example(d, rng.choice(format_names)))
    return examples


_WRAPPERS = "\"'`"


def normalize_answer(text: str) -> str:
    """Reduce a model reply to its candidate answer.

    Strips whitespace, keeps the first line, then removes trailing periods
    and surrounding quotes/backticks (repeatedly, so "`2021-03-05`." works).
    """
    lines = text.strip().splitlines()
    candidate = lines[0] if lines else ""
    previous = None
    while candidate != previous:
        previous = candidate
        candidate = candidate.strip().rstrip(".").strip(_WRAPPERS)
    return candidate


def exact_match(prediction: str, answer: str) -> bool:
    """True when the normalised prediction equals the canonical answer."""
    return normalize_answer(prediction) == answer
