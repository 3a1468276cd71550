"""Direction-based selective weight restoration with rollback (second paper, "Alleviating the
fear of losing alignment", §5 and Algorithm 1).

The harmful direction (Definition 1) is the mean last-token hidden state at the direction layer
L_dir over harmful prompts. Fine-tuning shifts it; each recovery round (§5.2.2) backpropagates
L = -cos(Δ_harmful, Δ^f_harmful) (eq. 2) from L_dir, keeps the weights whose gradient step
points toward their base value (eq. 3, FGSM-style), and resets the top P% of those by |grad| to
the base value. Rollback (§5.2.3, eq. 4) does the same towards the fine-tuned model's aligned
direction on benign prompts, reverting R% of the weights restored in that round to their
fine-tuned values. Algorithm 1's driver runs 5 rollback-free warm-up rounds; if the task
performance dropped by less than the fuse threshold it continues rollback-free (with the fuse),
else it restarts from the fine-tuned model with rollback in every round (with the fuse). The
fuse returns the previous round's weights once performance drops past the threshold.

Names follow Algorithm 1: ``extract_direction``, ``reset_weights``, ``_Recovery.recovery``,
``performance_drop``; ``run`` is the algorithm's main body (lines 27-34).

Where we depart from the paper (and from its code, see REFERENCES.md):

* L_dir = floor(num_layers * 2/3) (§5.2.1's two-thirds position; its code's floor(L * 4/6)). The
  direction is the pre-norm output of decoder layer L_dir (``hidden_states[L_dir]``), from a
  forward truncated after that layer, so the gradient reaches only layers < L_dir.
* Candidates: weights of decoder layers < L_dir except norm weights (as the paper's code);
  embeddings are skipped too (tied to the output layer in small models, so resetting them would
  also change layers after L_dir). Top-k is global over all candidate tensors.
* k = ceil(P% of the candidates satisfying eq. 3), the paper's "top P% of the identified
  weights" (the paper's code takes P% of all parameters). Rollback: k = ceil(R% of the weights
  restored in the round), chosen among them by eq. 3 with the fine-tuned weights as reference.
* "Performance drop" is relative: 100 (perf_f - perf) / perf_f on task exact match (the paper's 5%
  read as 95% of the fine-tuned score, as its code does); 0 when perf_f = 0. It is measured on
  ``DataConfig.fuse`` (default 64) held-out task examples (greedy, 16 tokens), not the 16 the live
  monitor watches: at n = 16 one flipped answer is a 6.25% drop and the 5% fuse would follow noise.
* Round numbers in the record are global: after a rollback restart they continue from the
  warm-up's (the paper counts the restarted E rounds from 1).
* The gradient of the cosine of a *mean* is taken in two passes (the mean without gradient, then
  each batch's share backpropagated), so memory stays one batch regardless of |D|.
* A non-finite direction loss stops the run with the last completed round's weights.

Memory (issue 13): one model at a time (the base is released before the fine-tuned model loads),
its weights and the fine-tuned copies of the candidate weights in scratch safetensors files read one
tensor at a time (``core.base.lean``), plus one round's gradients and boolean masks; the global
top-k runs tensor by tensor, never over a flat vector of all scores.
"""

from __future__ import annotations

import gc
import math
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction
from typing import Iterable, Iterator, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from core.base import lean
from core.base.errors import InputError
from core.base.tensors import chunks, cosine
from core.restoration.context import RestoreContext
from core.restoration.distances import squared_distance
from core.restoration.registry import RestoreOutput, register
from core.world.data import Example
from core.world.generation import chat_prompt, generate
from core.world.models import load_model
from core.world.task import exact_match


# ---------------------------------------------------------------------------- configuration
@dataclass(frozen=True)
class DirectionConfig:
    """Algorithm 1's hyper-parameters, with the paper's defaults (§5.2.2, §5.2.3)."""

    rate_percent: float = 0.2  # P%: share of the eq. 3 candidates reset per round
    rollback_percent: float = 20.0  # R%: share of a round's restored weights reverted by rollback
    rounds: int = 20  # E: recovery rounds (the rollback restart runs E rounds again)
    warmup_rounds: int = 5  # rollback-free, fuse-free trial rounds
    layer_fraction: float = 2 / 3  # L_dir = floor(num_layers * layer_fraction)
    layer: int = -1  # explicit L_dir (1..num_layers); overrides layer_fraction when >= 0
    fuse_drop_percent: float = 5.0  # relative task-performance drop that triggers rollback / the fuse
    batch_size: int = 16  # prompts per forward pass
    monitor_every: int = 1  # ctx.record_step every this many rounds

    def __post_init__(self):
        for name, value, paper in (
            ("rate_percent", self.rate_percent, 0.2),
            ("rollback_percent", self.rollback_percent, 20),
        ):
            if not 0 < value <= 100:
                raise InputError(
                    f"direction {name}={value} is outside (0, 100].",
                    f"pass a percentage above 0 and at most 100 (the paper uses {paper}).",
                )
        if self.rounds < 1:
            raise InputError(
                f"direction rounds={self.rounds} is below 1.", "pass at least one round (the paper uses 20)."
            )
        if not 0 <= self.warmup_rounds <= self.rounds:
            raise InputError(
                f"direction warmup_rounds={self.warmup_rounds} is outside 0..rounds={self.rounds}.",
                f"pass warmup_rounds between 0 and {self.rounds} (the paper: 5 of 20).",
            )
        if not 0 < self.layer_fraction <= 1:
            raise InputError(
                f"direction layer_fraction={self.layer_fraction} is outside (0, 1].",
                "use a fraction of the depth, e.g. 0.667 (the paper's two-thirds).",
            )
        if self.batch_size < 1 or self.monitor_every < 1:
            raise InputError(
                f"direction batch_size={self.batch_size}, monitor_every={self.monitor_every} must be at least 1.",
                "pass positive integers.",
            )
        if not self.fuse_drop_percent >= 0:
            raise InputError(
                f"direction fuse_drop_percent={self.fuse_drop_percent} is negative.",
                "pass a percentage >= 0 (the paper uses 5).",
            )

    def expected_steps(self) -> int:
        """Upper bound on ``ctx.record_step`` calls: step 0 plus one per ``monitor_every`` rounds of
        the longest path (warm-up, then E rounds with rollback). The rollback-free path records
        ``1 + rounds // monitor_every``; the fuse or a divergence stop earlier."""
        return 1 + (self.warmup_rounds + self.rounds) // self.monitor_every

    def direction_layer(self, num_layers: int) -> int:
        """L_dir for a model with ``num_layers`` decoder layers (§5.2.1: two-thirds by default)."""
        if self.layer < 0:
            return max(1, math.floor(num_layers * self.layer_fraction + 1e-9))
        if not 1 <= self.layer <= num_layers:
            raise InputError(
                f"direction layer={self.layer} is outside 1..{num_layers} "
                f"for a model with {num_layers} decoder layers.",
                f"pass layer between 1 and {num_layers}, or layer=-1 to use layer_fraction.",
            )
        return self.layer


class DirectionDiverged(RuntimeError):
    """The direction loss is not finite; raised before any weight changes."""


# ---------------------------------------------------------------------------- Definition 1: directions
def _decoder_layers(model) -> tuple[nn.Module, nn.ModuleList]:
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else model
    layers = getattr(decoder, "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise InputError(
            f"Model class {type(model).__name__} has no decoder 'layers' list to take a direction from.",
            "use a decoder-only model with a Llama-style layout (model.model.layers).",
        )
    return decoder, layers


@contextmanager
def _first_layers(model, layer: int) -> Iterator[tuple[nn.Module, nn.Module]]:
    """The decoder cut to its first ``layer`` blocks (restored on exit) and the last kept block."""
    decoder, layers = _decoder_layers(model)
    decoder.layers = nn.ModuleList(list(layers)[:layer])
    try:
        yield decoder, layers[layer - 1]
    finally:
        decoder.layers = layers


def _chat_batches(tokenizer, prompts: list[str], batch_size: int) -> list[list[str]]:
    """Chat-formatted prompts sorted by length (the mean is order-free), cut into batches."""
    return chunks(sorted((chat_prompt(tokenizer, p) for p in prompts), key=len), batch_size)


def _last_token_states(model, tokenizer, texts: list[str], layer: int) -> torch.Tensor:
    """(batch, hidden) pre-norm output of decoder layer ``layer`` at each text's last token."""
    device = next(model.parameters()).device
    enc = tokenizer(texts, add_special_tokens=False, padding=True, return_tensors="pt").to(device)
    captured: list[torch.Tensor] = []
    with _first_layers(model, layer) as (decoder, last):
        handle = last.register_forward_hook(
            lambda _m, _a, out: captured.append(out[0] if isinstance(out, tuple) else out)
        )
        try:
            decoder(input_ids=enc.input_ids, attention_mask=enc.attention_mask, use_cache=False)
        finally:
            handle.remove()
    mask = enc.attention_mask
    last_pos = mask.shape[1] - 1 - mask.flip(1).argmax(1)  # -1 under left padding; right padding works too
    return captured[-1][torch.arange(len(texts), device=device), last_pos]


def extract_direction(model, tokenizer, prompts: list[str], layer: int, batch_size: int = 16) -> torch.Tensor:
    """Definition 1: mean last-token hidden state after decoder layer ``layer`` (float32).

    Only the first ``layer`` blocks run (equal to ``hidden_states[layer]`` of a full forward for
    layer < num_layers). Follows the ambient grad mode, so it can be differentiated.
    """
    if not prompts:
        raise InputError(
            "No prompts to extract a direction from.", "give the recovery and rollback sets at least one prompt each."
        )
    total = None
    for texts in _chat_batches(tokenizer, prompts, batch_size):
        part = _last_token_states(model, tokenizer, texts, layer).float().sum(0)
        total = part if total is None else total + part
    return total / len(prompts)


# ---------------------------------------------------------------------------- Algorithm 1: reset_weights
def eligible_parameters(model, layer: int) -> dict[str, nn.Parameter]:
    """Weights Algorithm 1 may reset: decoder layers < ``layer`` (the only ones L_dir's gradient
    reaches), norm weights excluded; keyed by ``named_parameters`` names."""
    _, layers = _decoder_layers(model)
    kept = {id(m) for m in list(layers)[:layer]}
    out: dict[str, nn.Parameter] = {}
    for name, module in model.named_modules():
        if id(module) in kept:
            out.update({f"{name}.{sub}": p for sub, p in module.named_parameters() if "norm" not in sub.lower()})
    return out


@contextmanager
def _grad_only(model, params: Iterable[nn.Parameter]) -> Iterator[None]:
    """Gradients for ``params`` only (no embedding or later-layer gradients); flags restored on exit."""
    wanted = {id(p) for p in params}
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(id(p) in wanted)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def _direction_gradients(
    model,
    tokenizer,
    prompts: list[str],
    target: torch.Tensor,
    layer: int,
    batch_size: int,
    params: dict[str, nn.Parameter],
) -> None:
    """Accumulate d(-cos(target, Δ))/dθ into ``params``' .grad (eq. 2 / eq. 4).

    Δ = mean_i h_i, so dL/dh_i = (dL/dΔ) / N: the mean is taken without gradient, then each
    batch backpropagates its states against that upstream vector.
    """
    with torch.no_grad():
        current = extract_direction(model, tokenizer, prompts, layer, batch_size)
    with torch.enable_grad():
        current.requires_grad_(True)
        loss = -F.cosine_similarity(target.float().to(current.device), current, dim=0)
        if not torch.isfinite(loss):
            raise DirectionDiverged(f"direction loss is {float(loss.detach())}")
        (upstream,) = torch.autograd.grad(loss, current)
    with torch.enable_grad(), _grad_only(model, params.values()):
        for texts in _chat_batches(tokenizer, prompts, batch_size):
            states = _last_token_states(model, tokenizer, texts, layer).float()
            ((states @ upstream).sum() / len(prompts)).backward()


def _candidates(
    params: dict[str, nn.Parameter], reference: dict[str, torch.Tensor], restrict: dict[str, torch.Tensor] | None
) -> dict[str, torch.Tensor]:
    """Eq. 3: weights whose descent step moves them toward the reference, grad * (w - w_ref) > 0
    (compared by signs, so low-precision products cannot underflow), within ``restrict``."""
    out = {}
    for name, p in params.items():
        ok = (
            torch.zeros_like(p, dtype=torch.bool)
            if p.grad is None
            else (p.grad.sign() * (p - reference[name]).sign()) > 0
        )
        if restrict is not None:
            ok &= restrict[name] if name in restrict else torch.zeros_like(ok)
        out[name] = ok
    return out


def _top_k(params: dict[str, nn.Parameter], candidates: dict[str, torch.Tensor], k: int) -> dict[str, torch.Tensor]:
    """Masks of the ``k`` candidates with the largest |grad| over all tensors, found one tensor at a
    time (issue 13: no flat score vector the size of the eligible weights): a running top-k of the
    values gives the k-th largest |grad| t; every candidate above t is chosen, then candidates equal
    to t in tensor order until k are (``torch.topk`` breaks such ties in no documented order either)."""
    k = min(k, sum(int(c.sum()) for c in candidates.values()))
    if k == 0:
        return {n: torch.zeros_like(c) for n, c in candidates.items()}
    best = None
    for name, cand in candidates.items():
        values = _grad_abs(params[name])[cand]
        if best is not None:
            values = torch.cat([best, values.to(best.device)])
        best = torch.topk(values, min(k, values.numel()), sorted=False).values
    threshold = best.min()
    masks = {n: cand & (_grad_abs(params[n]) > threshold) for n, cand in candidates.items()}
    ties = k - sum(int(m.sum()) for m in masks.values())
    for name, cand in candidates.items():
        if ties <= 0:
            break
        tied = (cand & (_grad_abs(params[name]) == threshold)).flatten().nonzero().flatten()[:ties]
        masks[name].view(-1)[tied] = True
        ties -= tied.numel()
    return masks


def _grad_abs(p: nn.Parameter) -> torch.Tensor:
    return torch.zeros_like(p) if p.grad is None else p.grad.abs()


def _share(count: int, percent: float) -> int:
    """ceil(count * percent / 100), exact for decimal percentages (0.2% of 1000 is 2, not 3)."""
    return math.ceil(count * Fraction(repr(float(percent))) / 100)


def reset_weights(
    current,
    reference: dict[str, torch.Tensor],
    tokenizer,
    prompts: list[str],
    target_direction: torch.Tensor,
    layer: int,
    percent: float,
    batch_size: int = 16,
    restrict: dict[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """Algorithm 1, reset_weights (lines 5-12): one greedy step toward ``target_direction``.

    Backpropagates -cos(target, Δ(current)) from L_dir = ``layer``; candidates are eligible
    weights with grad * (w - w_ref) > 0 (eq. 3: descent moves them toward the reference); the
    top ``percent``% by |grad| (globally) are set to ``reference`` in place. ``restrict`` limits
    candidates to its masks and then k = ceil(percent% of the restricted weights) (rollback:
    "R% of the weights restored"); otherwise k = ceil(percent% of the candidates). Returns the
    boolean mask of reset weights for every eligible parameter name. Raises
    ``DirectionDiverged`` (before any change) on a non-finite loss.
    """
    params = eligible_parameters(current, layer)
    try:
        _direction_gradients(current, tokenizer, prompts, target_direction, layer, batch_size, params)
        with torch.no_grad():
            candidates = _candidates(params, reference, restrict)
            pool = candidates if restrict is None else {n: m for n, m in restrict.items() if n in params}
            masks = _top_k(params, candidates, _share(sum(int(m.sum()) for m in pool.values()), percent))
            for name, mask in masks.items():
                params[name][mask] = reference[name][mask]
    finally:
        for p in params.values():
            p.grad = None
    return masks


# ---------------------------------------------------------------------------- performance and the fuse
def performance(model, tokenizer, examples: list[Example]) -> float:
    """Task exact match (%) with 16 greedy tokens: the performance the fuse watches (0 if empty)."""
    if not examples:
        return 0.0
    outs = generate(model, tokenizer, [e.prompt for e in examples], 16, 32)
    return 100.0 * sum(exact_match(o, e.response or "") for o, e in zip(outs, examples)) / len(examples)


def performance_drop(reference: float, current: float) -> float:
    """Relative drop (%) of ``current`` below ``reference`` (the paper's "5%"); 0 when reference <= 0."""
    return 0.0 if reference <= 0 else 100.0 * (reference - current) / reference


class _Recovery:
    """Algorithm 1's state: the model being restored, the reference weights, counters and logging.

    Every candidate weight always holds either its fine-tuned or its base value, so a round's
    effect is a mask and undoing it (fuse, restart) copies fine-tuned values back under it.
    """

    def __init__(
        self,
        ctx: RestoreContext,
        config: DirectionConfig,
        model,
        layer: int,
        base_ref: dict,
        rest_sq: float,
        harmful: torch.Tensor,
        aligned: torch.Tensor,
    ):
        self.ctx, self.config, self.model, self.layer = ctx, config, model, layer
        self.params = eligible_parameters(model, layer)
        self.base_ref, self.rest_sq = base_ref, rest_sq
        self.ft_ref = lean.DiskTensors(self.params, ((n, p.detach()) for n, p in self.params.items()))
        self.harmful, self.aligned = harmful, aligned
        self.recovery_prompts = [e.prompt for e in ctx.data.recovery]
        self.rollback_prompts = [e.prompt for e in ctx.data.rollback]
        self.restored = {n: torch.zeros_like(p, dtype=torch.bool) for n, p in self.params.items()}
        self.round, self.version, self._score = 0, 0, (-1, 0.0)
        self.finetuned_performance = self.score()

    # -- weights
    @torch.no_grad()
    def revert(self, masks: dict[str, torch.Tensor]) -> None:
        """Put fine-tuned values back under ``masks``."""
        for name, mask in masks.items():
            self.params[name][mask] = self.ft_ref[name][mask]
            self.restored[name] &= ~mask
        self.version += 1

    def restart(self) -> None:
        """Back to M_f (Algorithm 1, line 33 starts again from the fine-tuned model)."""
        self.revert({n: m.clone() for n, m in self.restored.items()})

    # -- measurements
    def score(self) -> float:
        """Monitor-task performance of the current weights, computed once per weight state."""
        if self._score[0] != self.version:
            self._score = (self.version, performance(self.model, self.ctx.tokenizer, self.ctx.data.fuse_task))
        return self._score[1]

    def restored_count(self) -> int:
        return sum(int(m.sum()) for m in self.restored.values())

    def drop(self) -> float:
        return performance_drop(self.finetuned_performance, self.score())

    @torch.no_grad()
    def distances(self) -> dict[str, float]:
        """Frobenius distances over all weights (``core.restoration.runner.delta_distances``' definition);
        non-candidate weights equal the fine-tune's, contributing ``rest_sq`` to the base distance."""
        to_ft = to_base = 0.0
        for name, p in self.params.items():
            to_ft += squared_distance(p, self.ft_ref[name])
            to_base += squared_distance(p, self.base_ref[name])
        return {"distance_to_finetuned": math.sqrt(to_ft), "distance_to_base": math.sqrt(to_base + self.rest_sq)}

    def record(self, phase: str) -> dict:
        with torch.no_grad():
            now = extract_direction(
                self.model, self.ctx.tokenizer, self.recovery_prompts, self.layer, self.config.batch_size
            )
        return self.ctx.record_step(
            self.model,
            round=self.round,
            phase=phase,
            direction_cosine=cosine(self.harmful, now),
            restored_weights=self.restored_count(),
            fuse_exact_match=self.score(),
            **self.distances(),
        )

    # -- Algorithm 1, recovery (lines 13-25)
    def one_round(self, rollback: bool) -> dict[str, torch.Tensor]:
        """Lines 17-19: reset P% toward Δ_harmful, then (rollback) revert R% of those toward
        Δ_aligned. Returns the weights this round net restored; on divergence undoes the round."""
        c, tok = self.config, self.ctx.tokenizer
        changed: dict[str, torch.Tensor] = {}
        try:
            changed = reset_weights(
                self.model,
                self.base_ref,
                tok,
                self.recovery_prompts,
                self.harmful,
                self.layer,
                c.rate_percent,
                c.batch_size,
            )
            if rollback:
                back = reset_weights(
                    self.model,
                    self.ft_ref,
                    tok,
                    self.rollback_prompts,
                    self.aligned,
                    self.layer,
                    c.rollback_percent,
                    c.batch_size,
                    restrict=changed,
                )
                changed = {n: m & ~back[n] for n, m in changed.items()}
        except DirectionDiverged:
            self.revert(changed)
            raise
        for name, mask in changed.items():
            self.restored[name] |= mask
        self.version += 1
        return changed

    def recovery(self, rounds: int, rollback: bool, fuse: bool, phase: str) -> str | None:
        """Run ``rounds`` rounds; returns why it stopped early ("fuse" or the divergence) or None."""
        total = self.config.warmup_rounds + self.config.rounds
        for _ in range(rounds):
            self.ctx.progress.update(self.round / total, f"direction round {self.round + 1} ({phase})")
            self.round += 1
            try:
                changed = self.one_round(rollback)
            except DirectionDiverged as err:
                self.round -= 1
                return f"diverged in round {self.round + 1} ({phase}): {err}; kept the weights of round {self.round}"
            if fuse and self.drop() > self.config.fuse_drop_percent:
                self.revert(changed)  # lines 21-22: return M_{e-1}
                return "fuse"
            if self.round % self.config.monitor_every == 0:
                self.record(phase)
        return None


# ---------------------------------------------------------------------------- Algorithm 1, main body
def _load_references(ctx: RestoreContext, config: DirectionConfig) -> tuple[int, torch.Tensor, Mapping]:
    """Line 27: L_dir, Δ_harmful from the base on D_rec, and every base weight in a scratch file read
    one tensor at a time; the base is released before the fine-tuned model loads (issue 13: never
    two models in memory)."""
    base = load_model(ctx.base)
    layer = config.direction_layer(len(_decoder_layers(base)[1]))
    harmful = extract_direction(base, ctx.tokenizer, [e.prompt for e in ctx.data.recovery], layer, config.batch_size)
    params = {n: p.detach() for n, p in base.named_parameters()}
    reference = lean.DiskTensors(params, params.items())
    del base, params
    gc.collect()
    return layer, harmful, reference


def _untouched_distance_sq(model, eligible: Mapping, base_ref: Mapping) -> float:
    """Squared distance to the base of the weights Algorithm 1 never changes (streamed)."""
    return sum(squared_distance(p, base_ref[n]) for n, p in model.named_parameters() if n not in eligible)


@register(
    "direction",
    DirectionConfig,
    needs_adapter=False,
    summary=(
        "reset fine-tuned weights to base values to restore the harmful direction, "
        "with warm-up, rollback and a fuse (paper 2, Algorithm 1)"
    ),
)
def run(ctx: RestoreContext, config: DirectionConfig) -> RestoreOutput:
    """Algorithm 1 on (ctx.base, ctx.finetuned); returns the restored full model."""
    with torch.no_grad():
        layer, harmful, base_ref = _load_references(ctx, config)
    model = load_model(ctx.finetuned, merge=True)
    with torch.no_grad():
        rest_sq = _untouched_distance_sq(model, eligible_parameters(model, layer), base_ref)
        aligned = extract_direction(
            model, ctx.tokenizer, [e.prompt for e in ctx.data.rollback], layer, config.batch_size
        )  # line 28
    state = _Recovery(ctx, config, model, layer, base_ref, rest_sq, harmful, aligned)
    notes: dict = {
        "layer": layer,
        "phase": "warmup",
        "finetuned_performance": state.finetuned_performance,
        "fuse_triggered": False,
    }
    state.record("warmup")
    stop = state.recovery(config.warmup_rounds, rollback=False, fuse=False, phase="warmup")  # line 29
    if stop is None:
        notes["warmup_drop_percent"] = state.drop()
        if notes["warmup_drop_percent"] < config.fuse_drop_percent:  # line 30
            notes["phase"] = "continue"
            stop = state.recovery(config.rounds - config.warmup_rounds, rollback=False, fuse=True, phase="continue")
        else:
            notes["phase"] = "rollback"
            state.restart()
            stop = state.recovery(config.rounds, rollback=True, fuse=True, phase="rollback")
    if stop == "fuse":
        notes.update(fuse_triggered=True, fuse_round=state.round)
    elif stop is not None:
        notes["stopped"] = stop
    notes.update(rounds_run=state.round, restored_weights=state.restored_count(), final_performance=state.score())
    ctx.progress.update(1.0, "direction restoration done")
    return RestoreOutput(model, "model", notes=notes)
