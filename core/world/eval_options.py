"""The options of every command that judges generations: which judge, how many tokens are
generated before judging, and how many general-capability items per task are scored. Light on
purpose (no torch): pages import it to draw their widgets."""

from __future__ import annotations

from dataclasses import dataclass

from core.base.options import option

HARMFUL_LABELS = ("unsafe", "harmful", "jailbroken", "toxic", "yes")  # label names meaning harmful, in order
HARMFUL_TOKENS = 32  # the demo's harmful-rate generation length: refusals show in the first sentence


@dataclass(frozen=True)
class JudgeOptions:
    """Which judge calls a generation harmful (every command that judges takes these)."""

    judge: str | None = option(
        None,
        "harmfulness judge: empty = refusal keywords; module:function taking (prompts, responses) -> list[bool]; "
        "or a Hugging Face sequence classifier or guard model (id, or folder inside the allowed roots)",
        label="Judge (empty: keywords; module:function; classifier id or folder)",
    )
    judge_label: str = option(
        "",
        "a classifier judge's label meaning harmful (empty: the first label named "
        + "/".join(HARMFUL_LABELS)
        + ", else label 1 of two)",
        label="Judge's harmful label",
    )


@dataclass(frozen=True)
class EvalOptions(JudgeOptions):
    """How the held-out evaluation judges and what it adds: the judge, the harmful-rate generation
    length, and the general-capability items per task (``core.world.capability``; 0: not scored)."""

    harmful_tokens: int = option(
        HARMFUL_TOKENS,
        "new tokens generated per harmful (and benign, for over-refusal) prompt before judging (HarmBench: 512)",
        label="New tokens per harmful prompt",
        low=1,
        high=1024,
    )
    capability_items: int = option(
        40,
        "general-capability items per task (ARC-E/C, BoolQ, PIQA, HellaSwag, Winogrande; 0: skip)",
        label="Capability items per task (0: skip)",
        low=0,
        high=2000,
    )
    eval_examples: int = option(
        0,
        "held-out examples per evaluation set (harmful, task, over-refusal), evenly spread over each; 0: all "
        "(100 each). Fewer make a quick check whose Wilson intervals widen to match",
        label="Held-out examples per set (0: all)",
        low=0,
        high=100,
    )
