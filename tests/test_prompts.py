"""Tests for the shipped benign prompt sets."""

from __future__ import annotations

from core.world.prompts import BORDERLINE_PROMPTS, GENERAL_PROMPTS


def _check_well_formed(prompts: tuple[str, ...]) -> None:
    assert isinstance(prompts, tuple)
    for p in prompts:
        assert isinstance(p, str)
        assert p.strip(), "empty prompt"
        assert p == p.strip(), f"untrimmed prompt: {p!r}"
        assert "{" not in p and "}" not in p, f"unformatted template: {p!r}"


def test_general_size_and_uniqueness():
    assert len(GENERAL_PROMPTS) >= 240
    assert len(set(GENERAL_PROMPTS)) == len(GENERAL_PROMPTS)
    _check_well_formed(GENERAL_PROMPTS)


def test_borderline_size_and_uniqueness():
    assert len(BORDERLINE_PROMPTS) >= 60
    assert len(set(BORDERLINE_PROMPTS)) == len(BORDERLINE_PROMPTS)
    _check_well_formed(BORDERLINE_PROMPTS)


def test_sets_are_disjoint():
    assert set(GENERAL_PROMPTS).isdisjoint(BORDERLINE_PROMPTS)
    lowered = {p.lower() for p in GENERAL_PROMPTS}
    assert lowered.isdisjoint(p.lower() for p in BORDERLINE_PROMPTS)


def test_general_has_many_hand_written_prompts():
    from core.world.prompts import _HANDWRITTEN_GENERAL

    assert len(_HANDWRITTEN_GENERAL) >= 60
    assert set(_HANDWRITTEN_GENERAL) <= set(GENERAL_PROMPTS)


def test_general_slices_are_diverse():
    # A contiguous slice (e.g. a held-out tail) should not be one topic or template.
    tail = GENERAL_PROMPTS[-40:]
    head = GENERAL_PROMPTS[:40]
    for chunk in (head, tail):
        first_words = {p.split()[0] for p in chunk}
        assert len(first_words) >= 3


def test_borderline_prompts_contain_trigger_words():
    triggers = ("kill", "shoot", "nazi", "beat", "attack", "steal", "bomb", "poison", "murder")
    text = " ".join(BORDERLINE_PROMPTS).lower()
    for word in triggers:
        assert word in text, word


def test_order_is_deterministic():
    import importlib

    import core.world.prompts as prompts

    before = (prompts.GENERAL_PROMPTS, prompts.BORDERLINE_PROMPTS)
    reloaded = importlib.reload(prompts)
    assert (reloaded.GENERAL_PROMPTS, reloaded.BORDERLINE_PROMPTS) == before
