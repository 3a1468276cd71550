"""What a restoration method is handed: the pair, tokenizer, data, the step recorder and progress."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from core.base.progress import Progress
from core.restoration.data import RestorationData
from core.world.judge import Judge, keyword_judge
from core.world.models import ModelSpec


@dataclass
class RestoreContext:
    """What a method gets: the pair, tokenizer, data, the step recorder and progress."""

    base: ModelSpec
    finetuned: ModelSpec
    tokenizer: Any
    data: RestorationData
    record_step: Callable[..., dict]  # record_step(model, **extra) -> metrics; raises Cancelled
    progress: Progress
    seed: int = 0
    judge: Judge = keyword_judge  # the run's harmfulness judge (a method's own harm checks use it)
