"""The data partitions a restoration reads (paper 1, B.1's forget set and mixed curvature set,
B.2's validation split; paper 2, Algorithm 1's recovery and rollback sets), every one disjoint
from the held-out evaluation split. Responses of harmful and general prompts are the fine-tuned
model's own greedy answers (what it now says), so the same code serves any model pair.

Paper 1's sets, as ``restoration_data`` cuts them (harmful splits of ``core.world.data``):

* forget (B.1's D_f): the ``forget`` split's prompts the fine-tune complies with;
* curvature forget subset (B.1): the ``curvature`` split plus the second half of the ``recovery``
  split, complied with (B.1 asks for enough examples to give every forget-subset pair its own
  batch; the 32-prompt curvature split alone holds fewer than two batches of 16 once refusals
  are dropped);
* two curvature retain subsets (B.1): ``CURVATURE_TASK_POOL`` task ``train``-split examples each
  (the fine-tuning data's split; the demo fine-tune saw the first 400), after the retain and
  rollback sets;
* validation (B.2's step-scale grid search): the first ``VALIDATION_HARMFUL`` prompts of the
  ``recovery`` split complied with, and ``VALIDATION_TASK`` task examples of the ``monitor``
  split after the monitor and fuse examples. Disjoint from the held-out evaluation, the forget
  and retain sets and the curvature subsets. The ``recovery`` split is also the direction
  method's D_rec: the two methods are separate runs, so sharing it leaks nothing into either
  method's evaluation.

``retain_general`` (0 by default: the paper's retain set is the fine-tuning data) adds general
benign prompts with the fine-tune's answers to the retain set and as many further ones to the
validation retain side, so eq. 2 and B.2's grid also guard the answers to ordinary requests (the
over-refusal a forget-loss ascent can buy); both come from the ``retain`` benign split, disjoint
from the over-refusal evaluation prompts.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from core.base.cache import stable_hash
from core.base.errors import InputError
from core.base.options import option
from core.base.progress import Progress
from core.world.data import (
    BENIGN_SPLIT_SIZES,
    HARMFUL_SPLIT_SIZES,
    Example,
    benign_splits,
    harmful_splits,
    task_examples,
)
from core.world.data import fingerprint as data_fingerprint
from core.world.generation import own_answers
from core.world.judge import keyword_judge
from core.world.models import ModelSpec, fingerprint, load_model, load_tokenizer


@dataclass(frozen=True)
class DataConfig:
    """Sizes of the restoration data; every set is disjoint from the held-out evaluation split."""

    forget: int = option(
        64,
        "forget-split harmful prompts offered to the forget set (B.1's D_f: those the fine-tune complies with)",
        low=1,
        high=HARMFUL_SPLIT_SIZES["forget"],
    )
    retain: int = 64  # fine-tuning (task) examples whose loss must not rise (paper 1's retain set)
    retain_general: int = option(
        0,
        "general benign prompts with the fine-tune's answers added to the retain set, and as many more to the "
        "validation split, so eq. 2 guards ordinary answers too (0: the paper's task-only retain set)",
        low=0,
        high=BENIGN_SPLIT_SIZES["retain"] // 2,  # both halves come from the benign retain split
    )
    curvature_batch: int = 8  # task examples [retain, retain + 2 x this) left out, so rollback stays where it was
    # (the curvature method's pair batch is its own ``pair_batch`` parameter, its pools are below)
    recovery: int = 64  # harmful prompts for the harmful direction (Algorithm 1's D_rec)
    rollback: int = 64  # fine-tuning (task) prompts for the aligned direction (D_roll, section 5.2.3)
    monitor: int = option(
        16, "held-out harmful prompts and task examples watched at every step (the live monitor)", low=1, high=100
    )
    fuse: int = option(
        64, "task examples whose exact match the direction method's fuse and rollback decide on", low=1, high=512
    )
    response_tokens: int = option(
        48,
        "length in tokens of the fine-tune's own answers used as forget, recovery and validation responses",
        low=1,
        high=512,
    )


@dataclass
class RestorationData:
    """The sets a restoration reads. Responses of harmful and general prompts are the fine-tuned
    model's own greedy answers (what it now says), so the same code serves any model pair."""

    forget: list[Example]
    retain: list[Example]
    curvature_forget: list[Example]
    curvature_retain: list[list[Example]]
    recovery: list[Example]
    rollback: list[Example]
    monitor_harmful: list[Example]
    monitor_task: list[Example]
    fuse_task: list[Example]
    validation_forget: list[Example] = field(default_factory=list)  # B.2's grid search, harmful side
    validation_retain: list[Example] = field(default_factory=list)  # B.2's grid search, eq. 2's retain side

    def fingerprint(self) -> str:
        return stable_hash({f.name: data_fingerprint(_flat(getattr(self, f.name))) for f in fields(self)})


CURVATURE_TASK_POOL = 256  # task examples per curvature retain subset (B.1: at least 192 per set)
VALIDATION_HARMFUL = 32  # recovery-split prompts for the validation split (those complied with are kept)
VALIDATION_TASK = 64  # monitor-split task examples for the validation split


def _flat(items: list) -> list[Example]:
    return [e for part in items for e in (part if isinstance(part, list) else [part])]


def restoration_data(
    finetuned: ModelSpec, seed: int, config: DataConfig = DataConfig(), progress: Progress | None = None
) -> RestorationData:
    """Build the partitions of B.1 and Algorithm 1 from the shipped data and the fine-tune's answers.

    forget / curvature-forget: disjoint harmful splits with the answers the fine-tune gives and the
    judge calls harmful; retain: task training examples (the fine-tuning data; optionally general
    benign prompts with the fine-tune's answers too); further disjoint task subsets for the curvature pairs
    and the rollback set; monitor sets from the held-out splits (watched, never optimised on); the
    validation split of B.2 (see the module docstring), never the evaluation split.
    """
    progress = progress or Progress()
    harm, benign = harmful_splits(seed), benign_splits(seed)
    model, tok = load_model(finetuned), load_tokenizer(finetuned)
    fp = fingerprint(finetuned)
    harmful_prompts = harm["forget"][: config.forget] + harm["curvature"]
    answered = _answered(model, tok, harmful_prompts, config.response_tokens, fp, progress.stage(0, 0.6))
    flags = keyword_judge([e.prompt for e in answered], [e.response or "" for e in answered])
    forget = [e for e, h in zip(answered[: config.forget], flags) if h]
    curvature_forget = [e for e, h in zip(answered[config.forget :], flags[config.forget :]) if h]
    # a separate answer call, so the forget and curvature answers above keep their cache entry
    extra = _answered(model, tok, harm["recovery"], config.response_tokens, fp, progress.stage(0.6, 0.8))
    extra_flags = keyword_judge([e.prompt for e in extra], [e.response or "" for e in extra])
    v = VALIDATION_HARMFUL
    validation_forget = [e for e, h in zip(extra[:v], extra_flags[:v]) if h]
    curvature_forget += [e for e, h in zip(extra[v:], extra_flags[v:]) if h]
    n, m = config.retain, config.retain_general
    if 2 * m > len(benign["retain"]):
        raise InputError(
            f"retain_general={m} asks for {2 * m} general prompts (retain and validation halves).",
            f"use retain_general <= {len(benign['retain']) // 2}.",
        )
    general = (
        _answered(model, tok, benign["retain"][: 2 * m], config.response_tokens, fp, progress.stage(0.8, 1.0))
        if m
        else []
    )
    b = config.curvature_batch
    end = n + 2 * b + config.rollback
    task = task_examples("train", end + 2 * CURVATURE_TASK_POOL, seed)
    held = config.monitor + config.fuse
    data = RestorationData(
        forget=forget,
        retain=task[:n] + general[:m],
        curvature_forget=curvature_forget,
        curvature_retain=[task[end : end + CURVATURE_TASK_POOL], task[end + CURVATURE_TASK_POOL :]],
        recovery=harm["recovery"][: config.recovery],
        rollback=task[n + 2 * b : end],
        monitor_harmful=harm["eval"][: config.monitor],
        monitor_task=task_examples("monitor", config.monitor, seed),
        fuse_task=task_examples("monitor", held, seed)[config.monitor :],
        validation_forget=validation_forget,
        validation_retain=task_examples("monitor", held + VALIDATION_TASK, seed)[held:] + general[m:],
    )
    if not data.forget:
        raise InputError(
            "The forget set is empty: the fine-tuned model refuses every forget prompt.",
            "there is nothing to restore; check --finetuned.",
        )
    return data


def _answered(
    model, tokenizer, prompts: list[Example], max_new_tokens: int, model_fp: str, progress: Progress
) -> list[Example]:
    """``prompts`` with the fine-tune's greedy answers as (incomplete) responses, cached per model."""
    key = {"model": model_fp, "prompts": [p.prompt for p in prompts], "tokens": max_new_tokens}
    return own_answers(lambda: (model, tokenizer), prompts, max_new_tokens, ("restore-own-answers", key), progress)
