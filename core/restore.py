"""Restoration runs: the method registry, the shared data partitions, the live monitor, the run
store and the before/after evaluation. The methods themselves live in one module each:

* ``curvature`` and ``gradient-ascent``: ``core.influence`` (paper 1, eq. 5, B.1, B.2)
* ``direction``: ``core.harmful_direction`` (paper 2, Algorithm 1)
* ``resta``, ``safelora``, ``interpolate``: ``core.weight_arithmetic``

A run is a pure function of (model fingerprints, data fingerprint, method, config, seed): its
record lives in ``cache/runs/<id>/record.json`` (rewritten after every step, so a dashboard or a
second process sees it live) and its restored adapter or model in ``cache/runs/<id>/restored``
(written atomically at the end). A cancelled run keeps its steps (status "cancelled") and no
weights; asking again recomputes it.
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from scipy import stats

from core.cache import atomic_dir, atomic_write_text, memoize, stable_hash
from core.data import Example, benign_splits, fingerprint as data_fingerprint, harmful_splits, task_examples
from core.errors import Cancelled, InputError
from core.evaluation import EvalConfig, evaluate_model, summary
from core.generation import generate
from core.judge import keyword_judge
from core.loss import dataset_losses
from core.models import ModelSpec, fingerprint, load_model, load_tokenizer, validate
from core.progress import Progress
from core.runs import list_runs, load_record, runs_dir  # noqa: F401  (re-exported: the run store)
from core.task import exact_match


# ---------------------------------------------------------------------------- data partitions
@dataclass(frozen=True)
class DataConfig:
    """Sizes of the restoration data; every set is disjoint from the held-out evaluation split."""

    forget: int = 64  # harmful prompts whose compliant answers' loss is raised (B.1's D_f)
    retain: int = 64  # fine-tuning (task) examples whose loss must not rise (paper 1's retain set)
    retain_general: int = 0  # + general benign prompts with the fine-tune's answers (0: the paper's retain set)
    curvature_batch: int = 8  # examples per L-BFGS pair (B.1 uses 64 on a GPU; 8 keeps 2 CPU cores under 10 min)
    recovery: int = 64  # harmful prompts for the harmful direction (Algorithm 1's D_rec)
    rollback: int = 64  # fine-tuning (task) prompts for the aligned direction (D_roll, section 5.2.3)
    monitor: int = 16  # held-out harmful prompts and task examples watched at every step
    response_tokens: int = 48  # length of the fine-tuned model's own answers used as responses


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

    def fingerprint(self) -> str:
        return stable_hash({f.name: data_fingerprint(_flat(getattr(self, f.name))) for f in fields(self)})


def _flat(items: list) -> list[Example]:
    return [e for part in items for e in (part if isinstance(part, list) else [part])]


def own_answers(model, tokenizer, prompts: list[Example], max_new_tokens: int, model_fp: str, progress: Progress) -> list[Example]:
    """``prompts`` with the model's greedy answers as (incomplete) responses, cached per model."""
    key = {"model": model_fp, "prompts": [p.prompt for p in prompts], "tokens": max_new_tokens}
    answers = memoize("restore-own-answers", key, lambda: generate(model, tokenizer, [p.prompt for p in prompts], max_new_tokens, 32, progress=progress))
    return [Example(p.prompt, a, p.category, p.source, p.uid, complete=False) for p, a in zip(prompts, answers)]


def restoration_data(finetuned: ModelSpec, seed: int, config: DataConfig = DataConfig(), progress: Progress | None = None) -> RestorationData:
    """Build the partitions of B.1 and Algorithm 1 from the shipped data and the fine-tune's answers.

    forget / curvature-forget: disjoint harmful splits with the answers the fine-tune gives and the
    judge calls harmful; retain: task training examples (the fine-tuning data; optionally general
    benign prompts with the fine-tune's answers too); further disjoint task subsets for the curvature pairs
    and the rollback set; monitor sets from the held-out splits (watched, never optimised on).
    """
    progress = progress or Progress()
    harm, benign = harmful_splits(seed), benign_splits(seed)
    model, tok = load_model(finetuned), load_tokenizer(finetuned)
    fp = fingerprint(finetuned)
    harmful_prompts = harm["forget"][: config.forget] + harm["curvature"]
    answered = own_answers(model, tok, harmful_prompts, config.response_tokens, fp, progress.stage(0, 0.6))
    flags = keyword_judge([e.prompt for e in answered], [e.response or "" for e in answered])
    forget = [e for e, h in zip(answered[: config.forget], flags) if h]
    curvature_forget = [e for e, h in zip(answered[config.forget :], flags[config.forget :]) if h]
    n = config.retain
    general = own_answers(model, tok, benign["retain"][: config.retain_general], config.response_tokens, fp, progress.stage(0.6, 1.0)) if config.retain_general else []
    b = config.curvature_batch
    task = task_examples("train", n + 2 * b + config.rollback, seed)
    data = RestorationData(
        forget=forget,
        retain=task[:n] + general,
        curvature_forget=curvature_forget[:b],
        curvature_retain=[task[n : n + b], task[n + b : n + 2 * b]],
        recovery=harm["recovery"][: config.recovery],
        rollback=task[n + 2 * b :],
        monitor_harmful=harm["eval"][: config.monitor],
        monitor_task=task_examples("monitor", config.monitor, seed),
    )
    if not data.forget:
        raise InputError("The forget set is empty: the fine-tuned model refuses every forget prompt.", "there is nothing to restore; check --finetuned.")
    return data


# ---------------------------------------------------------------------------- live monitor
@dataclass(frozen=True)
class MonitorConfig:
    harmful_tokens: int = 24  # greedy tokens per monitor prompt (refusals show in the first sentence)
    task_tokens: int = 16
    loss_examples: int = 32  # retain/forget examples whose losses are correlated with the base's (C.1)


def _spread(items: list, n: int) -> list:
    """``n`` items evenly spread over ``items`` (the retain set is task examples then general)."""
    step = max(1, len(items) // n)
    return items[::step][:n]


class Monitor:
    """Per-step metrics of a restoration run (issue 4, item 4), emitted and recorded."""

    def __init__(self, base_model, tokenizer, data: RestorationData, config: MonitorConfig = MonitorConfig()):
        self.tok, self.data, self.config = tokenizer, data, config
        self.sets = {"forget": _spread(data.forget, config.loss_examples), "retain": _spread(data.retain, config.loss_examples)}
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
            out[f"{name}_r_base"] = float(stats.pearsonr(self.base_losses[name], losses).statistic) if np.std(losses) > 0 else float("nan")
        prompts = [e.prompt for e in self.data.monitor_harmful]
        answers = generate(model, self.tok, prompts, self.config.harmful_tokens, 32)
        out["harmful_rate"] = 100.0 * float(np.mean(keyword_judge(prompts, answers)))
        if task_exact_match is None:
            outs = generate(model, self.tok, [e.prompt for e in self.data.monitor_task], self.config.task_tokens, 32)
            task_exact_match = 100.0 * float(np.mean([exact_match(o, e.response or "") for o, e in zip(outs, self.data.monitor_task)]))
        out["task_exact_match"] = task_exact_match
        model.train(was_training)
        return out


# ---------------------------------------------------------------------------- methods
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


@dataclass
class RestoreOutput:
    """A method's result: the restored model (a PeftModel for ``kind="adapter"``, a plain model
    for ``kind="model"``), notes for the record, and optional trajectory snapshots (steps x P)."""

    model: Any
    kind: str
    notes: dict = field(default_factory=dict)
    trajectory: np.ndarray | None = None


@dataclass(frozen=True)
class Method:
    name: str
    config: type
    run: Callable[[RestoreContext, Any], RestoreOutput]
    needs_adapter: bool
    summary: str


METHODS: dict[str, Method] = {}


def register(name: str, config: type, needs_adapter: bool, summary: str):
    """Decorator: add a ``run(ctx, config) -> RestoreOutput`` function to the registry."""

    def wrap(fn):
        METHODS[name] = Method(name, config, fn, needs_adapter, summary)
        return fn

    return wrap


def _load_methods() -> None:
    import core.harmful_direction  # noqa: F401  (registers "direction")
    import core.influence  # noqa: F401  (registers "curvature", "gradient-ascent")
    import core.weight_arithmetic  # noqa: F401  (registers "resta", "safelora", "interpolate")


def method(name: str) -> Method:
    _load_methods()
    if name not in METHODS:
        raise InputError(f"Unknown restoration method '{name}'.", f"use one of: {', '.join(METHODS)}.")
    return METHODS[name]


def parse_config(m: Method, overrides: dict[str, str]) -> Any:
    """The method's config dataclass with ``key=value`` overrides converted to the field types."""
    defaults = m.config()
    current = {f.name: getattr(defaults, f.name) for f in fields(defaults)}
    values = {}
    for key, raw in overrides.items():
        name = key.replace("-", "_")
        if name not in current or is_dataclass(current[name]):
            settable = [k for k, v in current.items() if not is_dataclass(v)]
            raise InputError(f"Method '{m.name}' has no parameter '{key}' settable here.", f"use one of: {', '.join(settable)}.")
        values[name] = _convert(key, raw, current[name])
    return m.config(**values)


def _convert(key: str, raw: str, default: Any) -> Any:
    kind = type(default)
    try:
        if kind is bool:
            return raw.lower() in ("1", "true", "yes")
        if kind is tuple:
            item = type(default[0]) if default else str
            return tuple(item(x.strip()) for x in raw.split(","))
        return kind(raw)
    except ValueError:
        raise InputError(f"Parameter {key}={raw!r} is not a {kind.__name__}.", f"pass a {kind.__name__} value.") from None


def require_adapter(spec: ModelSpec, method_name: str) -> None:
    """LoRA-only methods refuse a full fine-tune with the list of methods that do apply."""
    if spec.finetuned and (Path(spec.finetuned) / "adapter_config.json").exists():
        return
    _load_methods()
    full = [n for n, m in METHODS.items() if not m.needs_adapter]
    raise InputError(
        f"Method '{method_name}' works on LoRA adapters, but '{spec.finetuned or spec.base}' is not a PEFT adapter.",
        f"pass an adapter directory with --finetuned, or use a method that takes full weights: {', '.join(full)}.",
    )


# ---------------------------------------------------------------------------- distances
def lora_deltas(model) -> dict[str, torch.Tensor]:
    """Effective weight update (scaling * B @ A) of every LoRA module of a PeftModel."""
    out = {}
    for name, module in model.named_modules():
        if hasattr(module, "lora_A") and "default" in getattr(module, "lora_A", {}):
            a, b = module.lora_A["default"].weight, module.lora_B["default"].weight
            out[name] = (b.detach().float() @ a.detach().float()) * module.scaling["default"]
    return out


def delta_distances(current: dict[str, torch.Tensor], finetuned: dict[str, torch.Tensor]) -> dict[str, float]:
    """Frobenius distances of the restored weights to the fine-tuned and to the base weights,
    given weight deltas from the base (so the base is the zero delta)."""
    to_ft = math.sqrt(sum(float((current[k] - finetuned[k]).pow(2).sum()) for k in current))
    to_base = math.sqrt(sum(float(current[k].pow(2).sum()) for k in current))
    return {"distance_to_finetuned": to_ft, "distance_to_base": to_base}


# ---------------------------------------------------------------------------- runs
@dataclass(frozen=True)
class RunRequest:
    method: str
    config: Any
    seed: int = 0
    data: DataConfig = DataConfig()
    monitor: MonitorConfig = MonitorConfig()
    eval: EvalConfig = EvalConfig()
    evaluate: bool = True  # before/after on the held-out split (off for trajectory-only runs)


def run_id(pair: dict[str, ModelSpec], request: RunRequest) -> str:
    return stable_hash(
        fingerprint(pair["base"]), fingerprint(pair["finetuned"]), request.method, asdict(request.config),
        request.seed, asdict(request.data), asdict(request.monitor), asdict(request.eval), request.evaluate, "restore-v1",
    )


def restored_spec(record: dict) -> ModelSpec:
    """The ModelSpec of a finished run's restored model (reloadable with ``load_model``)."""
    path = str(runs_dir() / record["id"] / "restored")
    return ModelSpec(record["base"], path) if record["artifact"] == "adapter" else ModelSpec(path)


class _Recorder:
    """Writes the run record after every step and forwards each step through progress."""

    def __init__(self, record: dict, monitor: Monitor, progress: Progress, expected_steps: int):
        self.record, self.monitor, self.progress = record, monitor, progress
        self.expected, self.t0 = max(1, expected_steps), time.monotonic()
        self.path = runs_dir() / record["id"] / "record.json"
        self.reached = 0.0  # the furthest fraction the method itself reported (the bar never goes back)

    def method_progress(self) -> Progress:
        """The progress handed to the method: it tracks how far the method has reported."""

        def track(event):
            lo, hi = self.progress.span
            self.reached = max(self.reached, (event.fraction - lo) / (hi - lo))
            if self.progress.callback is not None:
                self.progress.callback(event)

        return Progress(track, self.progress.cancel, self.progress.span, self.progress.start)

    def _fraction(self, steps: int) -> float:
        """Step ``steps - 1`` of ``expected`` done (step 0 is the starting point), never backwards."""
        return min(0.99, max(self.reached, (steps - 1) / max(1, self.expected - 1)))

    def save(self) -> None:
        atomic_write_text(self.path, json.dumps(self.record, indent=1, default=float))

    def __call__(self, model, **extra) -> dict:
        self.progress.update(self._fraction(len(self.record["steps"]) + 1), f"step {len(self.record['steps'])}: monitoring")
        row = {"step": len(self.record["steps"]), **self.monitor(model, extra.get("performance")), **extra, "wall_s": time.monotonic() - self.t0}
        for key, value in row.items():
            if isinstance(value, float) and not math.isfinite(value) and key.endswith("_loss"):
                row[key] = None
        self.record["steps"].append(row)
        self.save()
        self.progress.update(self._fraction(len(self.record["steps"])), f"step {row['step']}: harmful {row['harmful_rate']:.0f}% task {row['task_exact_match']:.0f}%", row)
        return row


def _evaluate(spec: ModelSpec, model, tok, seed: int, extra: list[Example], config: EvalConfig, progress: Progress) -> dict:
    from core.world import eval_sets

    report = evaluate_model(model, tok, eval_sets(seed, extra=extra), fingerprint(spec), config, progress=progress)
    return summary(report)


def add_visage(record: dict, seed: int = 0, progress: Progress | None = None) -> dict:
    """Before/after VISAGE (the basin analysis of ``core.basin``, default config) of a finished
    run, stored into its record; the fine-tuned model's basin is cached across runs."""
    from core.basin import BasinConfig, safety_basin

    if "visage" in record.get("after", {}):
        return record
    models = {"before": ModelSpec(**record["finetuned_spec"]), "after": restored_spec(record)}
    result = safety_basin(models, harmful_splits(seed)["eval"], BasinConfig(seed=seed), progress)
    for name in models:
        record.setdefault(name, {})["visage"] = result[name]["visage"]
    atomic_write_text(runs_dir() / record["id"] / "record.json", json.dumps({k: v for k, v in record.items() if not k.endswith("_extra")}, indent=1, default=float))
    return record


def restore(pair: dict[str, ModelSpec], request: RunRequest, extra: list[Example] | None = None, progress: Progress | None = None) -> dict:
    """Run (or return the stored) restoration ``request`` on ``pair``; returns its record.

    The record holds the parameters, per-step metrics, before/after summaries on the held-out
    split (and on ``extra`` prompts, reported separately) and where the restored weights are.
    """
    progress = progress or Progress()
    m = method(request.method)
    for spec in pair.values():
        validate(spec)
    if m.needs_adapter:
        require_adapter(pair["finetuned"], m.name)
    rid = run_id(pair, request)
    existing = load_record(rid)
    if existing and existing["status"] == "done" and (runs_dir() / rid / "restored").exists():
        existing = _with_extra(existing, extra, request, progress)
        progress.update(1.0, "run already done", existing)
        return existing

    data = restoration_data(pair["finetuned"], request.seed, request.data, progress.stage(0, 0.05))
    tok = load_tokenizer(pair["finetuned"])
    base_model = load_model(pair["base"])
    monitor = Monitor(base_model, tok, data, request.monitor)
    del base_model
    record = {
        "id": rid, "method": m.name, "config": asdict(request.config), "seed": request.seed,
        "data": asdict(request.data), "data_fingerprint": data.fingerprint(), "base": pair["base"].base,
        "finetuned": pair["finetuned"].finetuned or pair["finetuned"].base, "finetuned_spec": asdict(pair["finetuned"]),
        "models": {k: fingerprint(v) for k, v in pair.items()}, "status": "running", "steps": [],
        "started": time.time(), "artifact": None, "notes": {}, "error": None, "pid": os.getpid(),
    }
    recorder = _Recorder(record, monitor, progress.stage(0.05, 0.8), getattr(request.config, "expected_steps", lambda: 10)())
    (runs_dir() / rid).mkdir(parents=True, exist_ok=True)
    recorder.save()
    ctx = RestoreContext(pair["base"], pair["finetuned"], tok, data, recorder, recorder.method_progress(), request.seed)
    t0 = time.monotonic()
    try:
        out = m.run(ctx, request.config)
    except (Cancelled, KeyboardInterrupt):
        record.update(status="cancelled", finished=time.time())
        recorder.save()
        raise
    except Exception as err:  # noqa: BLE001 - any failure is recorded, then re-raised
        record.update(status="failed", error=str(err).splitlines()[0] if str(err) else type(err).__name__, finished=time.time())
        recorder.save()
        raise
    record["wall_s"] = time.monotonic() - t0
    record["notes"] = out.notes
    _save_restored(rid, out, pair, tok)
    record["artifact"] = out.kind
    spec = restored_spec(record)
    if request.evaluate:
        ev = progress.stage(0.8, 1.0)
        record["before"] = _evaluate(pair["finetuned"], load_model(pair["finetuned"]), tok, request.seed, [], request.eval, ev.stage(0, 0.5))
        record["after"] = _evaluate(spec, out.model, tok, request.seed, [], request.eval, ev.stage(0.5, 1.0))
    record.update(status="done", finished=time.time())
    recorder.save()
    record = _with_extra(record, extra, request, progress)
    progress.update(1.0, "restoration done", record)
    return record


def _save_restored(rid: str, out: RestoreOutput, pair: dict[str, ModelSpec], tok) -> None:
    with atomic_dir(runs_dir() / rid / "restored") as tmp:
        out.model.save_pretrained(tmp)
        if out.kind == "model":
            tok.save_pretrained(tmp)
        if out.trajectory is not None:
            np.save(tmp / "trajectory.npy", out.trajectory.astype(np.float32))


def trajectory(record: dict) -> np.ndarray | None:
    """The parameter snapshots (steps x P) a run stored, if any."""
    path = runs_dir() / record["id"] / "restored" / "trajectory.npy"
    return np.load(path) if path.exists() else None


def _with_extra(record: dict, extra: list[Example] | None, request: RunRequest, progress: Progress) -> dict:
    """Before/after on a user's extra harmful prompts, reported separately (not stored)."""
    if not extra or not request.evaluate:
        return record
    record = dict(record)
    ft = ModelSpec(**record["finetuned_spec"])
    spec = restored_spec(record)
    tok = load_tokenizer(spec)
    for name, s in (("before", ft), ("after", spec)):
        full = _evaluate(s, load_model(s), tok, request.seed, extra, request.eval, progress.stage(0.9, 1.0))
        record[f"{name}_extra"] = {k: v for k, v in full.items() if k.startswith("extra_")}
    return record


TABLE_COLUMNS = ("harmful_rate", "prefill_asr", "task_exact_match", "over_refusal")


def compare(pair: dict[str, ModelSpec], seed: int = 0, methods: list[str] | None = None, extra: list[Example] | None = None, progress: Progress | None = None, visage: bool = False) -> dict:
    """Every method (default config) on the same pair, seed and data; one row per model.

    Rows for the base and the fine-tuned model come first; LoRA-only methods are skipped (and
    listed) when the fine-tune is not an adapter. Runs are cached, so a repeat is instant.
    """
    from core.pairs import evaluate_pair

    progress = progress or Progress()
    _load_methods()
    names = methods or list(METHODS)
    for name in names:
        method(name)
    is_adapter = bool(pair["finetuned"].finetuned and (Path(pair["finetuned"].finetuned) / "adapter_config.json").exists())
    skipped = [n for n in names if METHODS[n].needs_adapter and not is_adapter]
    names = [n for n in names if n not in skipped]
    reports = evaluate_pair(pair, seed, extra, progress=progress.stage(0, 0.05))
    extra_cols = ("extra_harmful_rate", "extra_prefill_asr") if extra else ()
    rows = [{"model": name, **{c: summary(r)[c] for c in TABLE_COLUMNS + extra_cols}, "wall_s": 0.0} for name, r in reports.items()]
    if visage:
        from core.basin import BasinConfig, safety_basin

        basins = safety_basin(pair, harmful_splits(seed)["eval"], BasinConfig(seed=seed), progress.stage(0, 0.05))
        for row in rows:
            row["visage"] = basins[row["model"]]["visage"]
    runs = {}
    for i, name in enumerate(names):
        stage = progress.stage(0.05 + 0.95 * i / len(names), 0.05 + 0.95 * (i + 1) / len(names))
        record = restore(pair, RunRequest(name, METHODS[name].config(), seed), extra, stage)
        if visage:
            record = add_visage(record, seed, stage)
        runs[name] = record["id"]
        row = {"model": name, **{c: record["after"][c] for c in TABLE_COLUMNS}, **{c: record["after_extra"][c] for c in extra_cols}, "wall_s": record["wall_s"]}
        if visage:
            row["visage"] = record["after"]["visage"]
        rows.append(row)
    return {"table": rows, "runs": runs, "skipped": skipped}
