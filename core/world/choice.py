"""Which demo world (and data seed) a command uses. Torch-free, so the answer cache can read the
defaults before torch is imported; ``core.world.demo.WorldConfig`` extends it with the recipe."""

from __future__ import annotations

from dataclasses import dataclass

from core.base.options import option


@dataclass(frozen=True)
class WorldChoice:
    seed: int = option(0, "seed of the data splits and the demo world", low=0, high=1_000_000)
    harmful_examples: int = option(100, "harmful examples injected into the demo fine-tune", low=0, high=400)
