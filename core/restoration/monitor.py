"""The live monitor: per-step metrics of a restoration run (forget/retain loss, harmful rate,
task exact-match, Pearson r of per-example losses with the base, paper 1, C.1)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy import stats

from core.restoration.data import RestorationData
from core.world.data import spread
from core.world.generation import generate
from core.world.judge import Judge, keyword_judge
from core.world.loss import dataset_losses
from core.world.task import exact_match


@dataclass(frozen=True)
class MonitorConfig:
    harmful_tokens: int = 24  # greedy tokens per monitor prompt (refusals show in the first sentence)
    task_tokens: int = 16
    loss_examples: int = 32  # retain/forget examples whose losses are correlated with the base's (C.1)


class Monitor:
    """Per-step metrics of a restoration run (issue 4, item 4), emitted and recorded."""

    def __init__(
        self,
        base_model,
        tokenizer,
        data: RestorationData,
        config: MonitorConfig = MonitorConfig(),
        judge: Judge = keyword_judge,
    ):
        self.tok, self.data, self.config, self.judge = tokenizer, data, config, judge
        self.sets = {
            "forget": spread(data.forget, config.loss_examples),
            "retain": spread(data.retain, config.loss_examples),
        }
        self.base_losses = {k: dataset_losses(base_model, tokenizer, v) for k, v in self.sets.items()}

    @torch.no_grad()
    def __call__(self, model, task_exact_match: float | None = None) -> dict[str, float]:
        """Metrics of ``model`` now; a method that already scored the monitor task passes it in."""
        was_training = model.training
        model.eval()
        out: dict[str, float] = {}
        for name, examples in self.sets.items():
            losses = dataset_losses(model, self.tok, examples)
            out[f"{name}_loss"] = float(np.mean(losses))
            out[f"{name}_r_base"] = (
                float(stats.pearsonr(self.base_losses[name], losses).statistic) if np.std(losses) > 0 else float("nan")
            )
        prompts = [e.prompt for e in self.data.monitor_harmful]
        answers = generate(model, self.tok, prompts, self.config.harmful_tokens, 32)
        out["harmful_rate"] = 100.0 * float(np.mean(self.judge(prompts, answers)))
        if task_exact_match is None:
            outs = generate(model, self.tok, [e.prompt for e in self.data.monitor_task], self.config.task_tokens, 32)
            task_exact_match = 100.0 * float(
                np.mean([exact_match(o, e.response or "") for o, e in zip(outs, self.data.monitor_task)])
            )
        out["task_exact_match"] = task_exact_match
        model.train(was_training)
        return out
