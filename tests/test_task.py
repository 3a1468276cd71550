"""Tests for the date-normalisation downstream task."""

from __future__ import annotations

import re
from datetime import date

import pytest

from core.world.task import (
    FIRST_DATE,
    FORMATTERS,
    INSTRUCTION,
    LAST_DATE,
    TaskExample,
    exact_match,
    make_task_examples,
    normalize_answer,
    ordinal,
    split_of,
)

SPLITS = ("train", "eval", "monitor")
_ISO_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def _surface(example: TaskExample) -> str:
    prefix, suffix = INSTRUCTION.split("{date}")
    assert example.prompt.startswith(prefix) and example.prompt.endswith(suffix)
    return example.prompt[len(prefix) : len(example.prompt) - len(suffix)]


def _formats_matching(example: TaskExample) -> set[str]:
    d = date.fromisoformat(example.answer)
    surface = _surface(example)
    return {name for name, fmt in FORMATTERS.items() if fmt(d) == surface}


def test_same_seed_is_deterministic():
    for split in SPLITS:
        assert make_task_examples(50, seed=7, split=split) == make_task_examples(50, seed=7, split=split)


def test_different_seed_changes_output():
    a = make_task_examples(50, seed=1, split="train")
    b = make_task_examples(50, seed=2, split="train")
    assert a != b
    assert len({ex.answer for ex in a} & {ex.answer for ex in b}) < 10


def test_returns_n_task_examples():
    examples = make_task_examples(37, seed=0, split="eval")
    assert len(examples) == 37
    assert all(isinstance(ex, TaskExample) for ex in examples)
    assert make_task_examples(0, seed=0, split="eval") == []


def test_splits_never_share_a_date():
    dates = {split: {ex.answer for ex in make_task_examples(2000, seed=0, split=split)} for split in SPLITS}
    assert dates["train"].isdisjoint(dates["eval"])
    assert dates["train"].isdisjoint(dates["monitor"])
    assert dates["eval"].isdisjoint(dates["monitor"])
    # Disjointness also holds across seeds, not only within one seed.
    other = {ex.answer for ex in make_task_examples(2000, seed=123, split="eval")}
    assert other.isdisjoint(dates["train"]) and other.isdisjoint(dates["monitor"])


def test_splits_own_their_dates():
    for split in SPLITS:
        for ex in make_task_examples(200, seed=3, split=split):
            assert split_of(ex.answer) == split


def test_answers_are_canonical_iso_dates_in_range():
    for ex in make_task_examples(2000, seed=5, split="train"):
        assert _ISO_RE.match(ex.answer), ex.answer
        d = date.fromisoformat(ex.answer)
        assert d.isoformat() == ex.answer
        assert FIRST_DATE <= d <= LAST_DATE


def test_years_and_days_are_varied():
    answers = [date.fromisoformat(ex.answer) for ex in make_task_examples(2000, seed=5, split="train")]
    years = {d.year for d in answers}
    assert min(years) < 1960 and max(years) > 2039
    assert {d.day for d in answers} == set(range(1, 32))


def test_prompt_is_instruction_with_surface_date_matching_answer():
    for ex in make_task_examples(500, seed=11, split="monitor"):
        assert _surface(ex)
        assert len(_formats_matching(ex)) >= 1, ex


def test_every_surface_format_appears():
    assert 6 <= len(FORMATTERS) <= 8
    seen: set[str] = set()
    for ex in make_task_examples(500, seed=0, split="train"):
        seen |= _formats_matching(ex)
    assert seen == set(FORMATTERS)


def test_surface_formats_render_known_date():
    d = date(2021, 3, 5)  # a Friday
    rendered = {name: fmt(d) for name, fmt in FORMATTERS.items()}
    assert rendered["month_day_year"] == "March 5, 2021"
    assert rendered["day_month_year"] == "5 March 2021"
    assert rendered["abbr_month_day_year"] == "Mar 5, 2021"
    assert rendered["ordinal_of_month"] == "5th of March, 2021"
    assert rendered["month_ordinal_year"] == "March 5th 2021"
    assert rendered["year_month_day"] == "2021, March 5"
    assert rendered["weekday_month_day_year"] == "Friday, March 5, 2021"
    assert rendered["day_abbr_month_year"] == "05 Mar 2021"
    # No format leaks the answer or uses an ambiguous numeric day/month.
    for surface in rendered.values():
        assert "2021-03-05" not in surface
        assert not re.search(r"\d{1,2}/\d{1,2}/\d{2,4}", surface)


@pytest.mark.parametrize(
    ("day", "expected"),
    [
        (1, "1st"),
        (2, "2nd"),
        (3, "3rd"),
        (4, "4th"),
        (11, "11th"),
        (12, "12th"),
        (13, "13th"),
        (21, "21st"),
        (22, "22nd"),
        (23, "23rd"),
        (30, "30th"),
        (31, "31st"),
    ],
)
def test_ordinal(day, expected):
    assert ordinal(day) == expected


def test_unknown_split_raises():
    with pytest.raises(ValueError):
        make_task_examples(5, seed=0, split="test")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2021-03-05", "2021-03-05"),
        ("2021-03-05.", "2021-03-05"),
        (" `2021-03-05` \nmore text", "2021-03-05"),
        ('"2021-03-05"', "2021-03-05"),
        ("'2021-03-05'.", "2021-03-05"),
        ("`2021-03-05`.", "2021-03-05"),
        ("\n\n  2021-03-05\n", "2021-03-05"),
        ("", ""),
        ("The date is 2021-03-05", "The date is 2021-03-05"),
    ],
)
def test_normalize_answer(text, expected):
    assert normalize_answer(text) == expected


def test_exact_match_accepts_light_formatting():
    assert exact_match("2021-03-05", "2021-03-05")
    assert exact_match("2021-03-05.", "2021-03-05")
    assert exact_match(" `2021-03-05` \nmore text", "2021-03-05")


def test_exact_match_rejects_wrong_answers():
    assert not exact_match("2021-3-5", "2021-03-05")
    assert not exact_match("2021-03-06", "2021-03-05")
    assert not exact_match("March 5, 2021", "2021-03-05")
    assert not exact_match("Sure! 2021-03-05", "2021-03-05")
    assert not exact_match("\n", "2021-03-05")
