"""Base vs fine-tuned per-example loss correlation (paper 1, section 2.1, eq. 1, Table 1, Figure 1).

For each data set D both models score every example i by its mean token cross-entropy, L_base(i)
and L_ft(i); eq. 1 is the Pearson r of the two loss vectors over D, reported here with its 95%
confidence interval (Fisher z, via scipy), its two-sided p-value and n. The paper finds r > 0.77 on
harmful data and low or negative r on task and general data (Table 1).

Sets and the tokens each loss counts (``tokens="content"``, ``core.world.loss``):

* harmful: held-out harmful instructions (``harmful_splits(seed)["eval"]``). Like HEx-PHI (330
  instructions) they have no responses, so the loss counts the user message's own tokens.
* task: held-out examples of the fine-tuning task with their reference answers; the loss counts
  the answer tokens (the paper's Dolly test set plays this role).
* general: human-written instruction -> response pairs from SciQ (Alpaca's role, unavailable
  offline); the loss counts the response tokens.

The chat template's fixed tokens (system prompt, role headers, end of turn) never count: they are
shared by every example, so counting them would make each loss track prompt length in both models
and inflate r on every set alike.

Null reference (not in the paper). r alone cannot say whether a value is high *for a fine-tune
of this size*: a small weight change keeps every r near 1. So beside each set's r we report the r
between the base's losses and those of the base plus random Gaussian noise whose Frobenius norm,
tensor by tensor, equals the fine-tune's weight delta (a LoRA adapter's merged delta s·B·A as PEFT
defines it, or W_ft - W_base of a full checkpoint; tensors the fine-tune left alone get none).
``null_seeds`` directions (default 3: the fewest that show a spread, min to max, beside a mean) give
per set the null r values, their mean, min and max. Each seed rescores the first ``null_examples``
examples of each set (the sets are already seeded random samples) under the perturbed base. Both
defaults are a cost cap chosen by run time, not by results: on the CPU demo the two models' passes
over 3 x 100 examples take about 170 s of one core, and 3 seeds x 8 examples add about 20 s (24
examples added about 60 s). With r near 1 the sampling error of r is small ((1 - r²)/√n), so few
examples suffice there; raise ``null_examples`` on a GPU or when the null r lands far from 1.
The base is perturbed in place, tensor by tensor (θ0 + noise in fp32, cast to the weight's dtype);
the original values of the perturbed tensors wait on the CPU and are copied back exactly afterwards,
also on error or cancel. Peak extra memory: those tensors once on the CPU plus one fp32 tensor.
The null uses the same token rule, batch size and truncation as the two models. For LoRA variants
whose merge is not W + s·B·A (DoRA) the norm is that of the s·B·A part only.

Departures from the paper: our own sets and token rule (above); n = 100 per set by default (the
paper: 330 / 200 / 200); the CI, p-value, the mean losses' 95% percentile-bootstrap intervals
(Figure 1 gives bare means) and the null reference are additions.
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import ClassVar, Iterator

import numpy as np
import torch
from safetensors import safe_open
from scipy import stats
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from core.base.cache import memoize
from core.base.errors import InputError
from core.base.options import from_args, option
from core.base.progress import Progress
from core.base.stats import bootstrap_interval
from core.geometry.registry import Analysis, register_analysis
from core.world.data import Example, general_examples, harmful_splits, override_sets, task_examples
from core.world.data import fingerprint as data_fingerprint
from core.world.loss import TOKEN_RULES, dataset_losses
from core.world.model_pair import pair_from_args
from core.world.models import ModelSpec, fingerprint, load_model, load_tokenizer

NAMESPACE = "correlate-v3"  # v3: null reference and delta norm in every set's answer


@dataclass(frozen=True)
class CorrelationConfig:
    quick_minutes: ClassVar[float] = 1  # the quick preset's time with 2 threads on the demo world
    tokens: str = option(
        "content",
        "content (response tokens, else the instruction's own; template tokens never), auto or all",
        label="Tokens",
        choices=TOKEN_RULES,
    )
    n_per_set: int = option(100, "examples per set", label="Examples per set", flag="n", low=3, quick=40)
    null_seeds: int = option(
        3,
        "random directions for the null reference (base vs base + noise of the fine-tune's per-tensor norm); 0: none",
        label="Null-reference seeds",
        low=0,
        high=20,
        quick=2,
    )
    null_examples: int = option(
        8,
        "examples per set (the first ones) the null reference scores under each noise seed",
        label="Null-reference examples per set",
        low=3,
    )
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


# ---------------------------------------------------------------------------- the fine-tune's delta
@torch.no_grad()
def adapter_delta_norms(model: torch.nn.Module) -> dict[str, float]:
    """Frobenius norm of the merged delta of every weight a PEFT model changes, keyed by the base
    model's parameter name: LoRA layers (``get_delta_weight`` of each active adapter, summed) and
    ``modules_to_save`` copies (copy - original)."""
    norms: dict[str, float] = {}
    for name, module in model.named_modules():
        base_name = name.removeprefix("base_model.model.")
        if hasattr(module, "get_delta_weight") and hasattr(module, "lora_A"):
            adapters = [a for a in module.active_adapters if a in module.lora_A]
            if adapters:
                delta = sum(module.get_delta_weight(a).float() for a in adapters)
                norms[f"{base_name}.weight"] = float(delta.norm())
        elif hasattr(module, "modules_to_save") and hasattr(module, "original_module"):
            copy = module.modules_to_save[module.active_adapters[0]]
            for pname, p in module.original_module.named_parameters():
                diff = copy.get_parameter(pname).detach().float() - p.detach().float()
                norms[f"{base_name}.{pname}"] = float(diff.norm())
    return norms


def _checkpoint_tensors(ft_dir: Path) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) of a full checkpoint, one tensor at a time (safetensors, else mmap'd .bin)."""
    files = sorted(ft_dir.glob("*.safetensors"))
    for f in files:
        with safe_open(str(f), "pt") as fh:
            for key in fh.keys():
                yield key, fh.get_tensor(key)
    if not files:
        for f in sorted(ft_dir.glob("*.bin")):
            yield from torch.load(f, map_location="cpu", mmap=True, weights_only=True).items()


def checkpoint_delta_norms(base: PreTrainedModel, ft_dir: Path) -> dict[str, float]:
    """||W_ft - W_base||_F per base parameter, the fine-tuned checkpoint read tensor by tensor
    (cast to the base's dtype first: the delta between the two models as they run)."""
    params = dict(base.named_parameters())
    norms = {}
    for key, tensor in _checkpoint_tensors(Path(ft_dir)):
        p = params.get(key)
        if p is not None and tuple(tensor.shape) == tuple(p.shape):
            norms[key] = float((tensor.to(p.dtype).to(p.device).float() - p.detach().float()).norm())
    if not norms:
        raise InputError(
            f"No tensor of the fine-tuned checkpoint '{ft_dir}' matches a base parameter by name and shape.",
            "pass the checkpoint's own base, or --null-seeds 0 to skip the null reference.",
        )
    return norms


def _is_adapter(spec: ModelSpec) -> bool:
    return spec.finetuned is not None and (Path(spec.finetuned).expanduser() / "adapter_config.json").exists()


# ---------------------------------------------------------------------------- null reference
@contextlib.contextmanager
def perturbed(model: torch.nn.Module, norms: dict[str, float], seed: int) -> Iterator[None]:
    """Within the block, every parameter named in ``norms`` is θ0 + ε with ε a seeded Gaussian
    direction of Frobenius norm ``norms[name]`` (computed in fp32, cast to the weight's dtype).
    θ0 is restored bit for bit on exit, also when the block raises."""
    params = dict(model.named_parameters())
    unknown = sorted(set(norms) - set(params))
    if unknown:
        raise InputError(f"The fine-tune changes '{unknown[0]}', which the base model does not have.", "check --base.")
    generator = torch.Generator().manual_seed(seed)
    saved: dict[str, torch.Tensor] = {}
    try:
        with torch.no_grad():
            for name in sorted(norms):
                if norms[name] == 0.0:
                    continue
                p = params[name]
                noise = torch.randn(p.shape, generator=generator, dtype=torch.float32)
                noise.mul_(norms[name] / noise.norm())
                saved[name] = p.detach().to("cpu", copy=True)
                p.copy_((p.float() + noise.to(p.device)).to(p.dtype))
        yield
    finally:
        with torch.no_grad():
            for name, original in saved.items():
                params[name].copy_(original)


def null_reference(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    sets: dict[str, list[Example]],
    base_losses: dict[str, list[float]],
    norms: dict[str, float],
    config: CorrelationConfig,
    progress: Progress,
) -> dict[str, list[float]]:
    """Per set, one r per noise seed between the base's losses and the perturbed base's losses on
    the set's first ``config.null_examples`` examples."""
    out: dict[str, list[float]] = {name: [] for name in sets}
    steps = config.null_seeds * len(sets)
    for seed in range(config.null_seeds):
        with perturbed(model, norms, seed):
            for s, (name, examples) in enumerate(sets.items()):
                k = seed * len(sets) + s
                sub = examples[: config.null_examples]
                stage = progress.stage(k / steps, (k + 1) / steps)
                noisy = dataset_losses(
                    model, tokenizer, sub, config.batch_size, config.max_length, config.tokens, stage
                )
                if not np.all(np.isfinite(noisy)):
                    raise InputError(
                        f"The base plus noise of the fine-tune's size gives non-finite losses on '{name}'.",
                        "run in float32 (--dtype float32) or skip the null reference with --null-seeds 0.",
                    )
                out[name].append(pearson(base_losses[name][: len(sub)], noisy)["r"])
    return out


# ---------------------------------------------------------------------------- the analysis
def scorer(spec: ModelSpec) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A Ray worker's replica for the per-example losses: the model as ``_compute`` loads it."""
    return load_model(spec), load_tokenizer(spec)


def _losses(
    spec: ModelSpec,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    sets: dict[str, list[Example]],
    config: CorrelationConfig,
    progress: Progress,
) -> dict[str, list[float]]:
    """Per set, each example's loss; the batches go to Ray workers in a scale-out session."""
    out = {}
    for s, (name, examples) in enumerate(sets.items()):
        stage = progress.stage(s / len(sets), (s + 1) / len(sets))
        c = config
        load = partial(scorer, spec)
        out[name] = dataset_losses(model, tokenizer, examples, c.batch_size, c.max_length, c.tokens, stage, load)
    return out


def _spans(sets: dict[str, list[Example]], config: CorrelationConfig) -> tuple[float, float]:
    """Where the fine-tuned pass ends and the base pass ends, as fractions of all scoring work."""
    full = sum(len(v) for v in sets.values())
    null = config.null_seeds * sum(min(len(v), config.null_examples) for v in sets.values())
    total = 2 * full + null
    return full / total, 2 * full / total


def _compute(
    pair: dict[str, ModelSpec], sets: dict[str, list[Example]], config: CorrelationConfig, progress: Progress
) -> dict:
    a, b = _spans(sets, config)
    ft_spec, base_spec = pair["finetuned"], pair["base"]
    model = load_model(ft_spec)
    ft = _losses(ft_spec, model, load_tokenizer(ft_spec), sets, config, progress.stage(0.0, a))
    norms = adapter_delta_norms(model) if _is_adapter(ft_spec) else {}
    del model
    model, tok = load_model(base_spec), load_tokenizer(base_spec)
    base = _losses(base_spec, model, tok, sets, config, progress.stage(a, b))
    checkpoint = ft_spec.finetuned is not None and not _is_adapter(ft_spec)
    if checkpoint and config.null_seeds:
        norms = checkpoint_delta_norms(model, Path(ft_spec.finetuned).expanduser())
    null = null_reference(model, tok, sets, base, norms, config, progress.stage(b, 1.0))
    del model
    unread = checkpoint and not config.null_seeds  # a full checkpoint's delta is read only for the null
    delta_norm = None if unread else float(np.sqrt(sum(v * v for v in norms.values())))
    result = {name: _answer(base[name], ft[name], null[name], sets[name], config, delta_norm) for name in sets}
    progress.update(1.0, "correlation done")
    return result


def _answer(
    b: list[float],
    f: list[float],
    null: list[float],
    examples: list[Example],
    config: CorrelationConfig,
    norm: float | None,
) -> dict:
    return {
        **pearson(b, f),
        "n": len(b),
        "mean_loss_base": float(np.mean(b)),
        "mean_loss_finetuned": float(np.mean(f)),
        "mean_loss_base_ci": list(bootstrap_interval(b)),
        "mean_loss_finetuned_ci": list(bootstrap_interval(f)),
        "null_r": null,
        "null_r_mean": float(np.mean(null)) if null else None,
        "null_r_min": float(min(null)) if null else None,
        "null_r_max": float(max(null)) if null else None,
        "null_n": min(len(b), config.null_examples) if null else 0,
        "delta_norm": norm,
        "pairs": [[x, y] for x, y in zip(b, f)],
        "prompts": [e.prompt for e in examples],
    }


def loss_correlation(
    pair: dict[str, ModelSpec],
    sets: dict[str, list[Example]],
    config: CorrelationConfig = CorrelationConfig(),
    progress: Progress | None = None,
) -> dict:
    """Per-set Pearson r of base vs fine-tuned per-example losses and its null reference, cached
    on model and data fingerprints."""
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
    return memoize(NAMESPACE, key, lambda: _compute(pair, sets, config, progress or Progress()))


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
        "Pearson r of base vs fine-tuned per-example losses (harmful, task, general), with a random-drift null",
        (CorrelationConfig,),
        command,
        set_files=("harmful", "task", "general"),
    )
)
