"""Base vs fine-tuned per-example loss correlation (paper 1, section 2.1, Table 1, Figure 1).

For each data set (harmful, task, general) both models score every example by mean token
cross-entropy; the Pearson r between the two loss vectors (with its 95% confidence interval
and p-value from scipy) says whether fine-tuning preserved how the model responds to that
kind of input. The paper finds r > 0.77 on harmful data and near zero on task/general data.

Default sets: harmful = the held-out harmful prompts (no responses, so the whole chat-formatted
text counts), task = held-out date-normalisation examples (the answer tokens count), general =
the benign retain prompts (whole text). ``tokens`` chooses what counts (see ``core.world.loss``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats

from core.base.cache import memoize
from core.base.errors import InputError
from core.base.options import from_args, option
from core.base.progress import Progress
from core.geometry.registry import Analysis, register_analysis
from core.world.data import Example, general_examples, harmful_splits, override_sets, task_examples
from core.world.data import fingerprint as data_fingerprint
from core.world.loss import TOKEN_RULES, dataset_losses
from core.world.model_pair import pair_from_args
from core.world.models import ModelSpec, fingerprint, load_model, load_tokenizer


@dataclass(frozen=True)
class CorrelationConfig:
    tokens: str = option(
        "content",
        "content (response tokens, else the instruction's own; template tokens never), auto or all",
        label="Tokens",
        choices=TOKEN_RULES,
    )
    n_per_set: int = option(100, "examples per set", label="Examples per set", flag="n", low=3)
    batch_size: int = 8
    max_length: int = 256


def default_sets(seed: int = 0, n: int = 100) -> dict[str, list[Example]]:
    """harmful / task / general evaluation sets for the correlation analysis."""
    return {
        "harmful": harmful_splits(seed)["eval"][:n],
        "task": task_examples("eval", n, seed),
        "general": general_examples(n, seed),
    }


def pearson(base: list[float], finetuned: list[float]) -> dict[str, float]:
    """Pearson r with a 95% confidence interval (Fisher z, via scipy) and two-sided p-value."""
    if len(base) < 3:
        raise InputError(f"Correlation needs at least 3 examples per set, got {len(base)}.", "use a larger data set.")
    if not (np.all(np.isfinite(base)) and np.all(np.isfinite(finetuned))):
        raise InputError(
            "Some per-example losses are NaN or infinite.", "check the model (dtype overflow?) or drop empty examples."
        )
    res = stats.pearsonr(base, finetuned)
    ci = res.confidence_interval(0.95)
    return {"r": float(res.statistic), "ci_low": float(ci.low), "ci_high": float(ci.high), "p_value": float(res.pvalue)}


def _compute(
    pair: dict[str, ModelSpec], sets: dict[str, list[Example]], config: CorrelationConfig, progress: Progress
) -> dict:
    losses: dict[str, dict[str, list[float]]] = {name: {} for name in sets}
    for m, (model_name, spec) in enumerate(pair.items()):
        model, tok = load_model(spec), load_tokenizer(spec)
        for s, (set_name, examples) in enumerate(sets.items()):
            k = m * len(sets) + s
            stage = progress.stage(k / (len(pair) * len(sets)), (k + 1) / (len(pair) * len(sets)))
            losses[set_name][model_name] = dataset_losses(
                model, tok, examples, config.batch_size, config.max_length, config.tokens, stage
            )
        del model
    result = {}
    for set_name, by_model in losses.items():
        b, f = by_model["base"], by_model["finetuned"]
        result[set_name] = {
            **pearson(b, f),
            "n": len(b),
            "mean_loss_base": float(np.mean(b)),
            "mean_loss_finetuned": float(np.mean(f)),
            "pairs": [[x, y] for x, y in zip(b, f)],
            "prompts": [e.prompt for e in sets[set_name]],
        }
    progress.update(1.0, "correlation done")
    return result


def loss_correlation(
    pair: dict[str, ModelSpec],
    sets: dict[str, list[Example]],
    config: CorrelationConfig = CorrelationConfig(),
    progress: Progress | None = None,
) -> dict:
    """Per-set Pearson r of base vs fine-tuned per-example losses, cached on fingerprints."""
    if config.tokens not in TOKEN_RULES:
        raise InputError(f"Unknown --tokens '{config.tokens}'.", f"use one of {', '.join(TOKEN_RULES)}.")
    for name, examples in sets.items():
        if not examples:
            raise InputError(f"The '{name}' set is empty.", "pass a data set with at least 3 examples.")
    key = {
        "models": {k: fingerprint(v) for k, v in pair.items()},
        "data": {k: data_fingerprint(v) for k, v in sets.items()},
        "config": asdict(config),
    }
    return memoize("correlate-v2", key, lambda: _compute(pair, sets, config, progress or Progress()))


def command(args, progress: Progress) -> dict:
    """``python -m core correlate``: the answer with prompts cut to 100 characters."""
    config = from_args(CorrelationConfig, args)
    sets = override_sets(default_sets(args.seed, config.n_per_set), args)
    result = loss_correlation(pair_from_args(args, progress), sets, config, progress)
    return {name: {**r, "prompts": [p[:100] for p in r["prompts"]]} for name, r in result.items()}


register_analysis(
    Analysis(
        "correlate",
        "Loss correlation",
        "Pearson r of base vs fine-tuned per-example losses (harmful, task, general)",
        (CorrelationConfig,),
        command,
        set_files=("harmful", "task", "general"),
    )
)
