"""Restoration runs: the runner that loads the pair, builds the data and the monitor, calls a
registered method, records every step and evaluates before/after on the held-out split.

The methods live in ``core.restoration.methods`` (one module each, registered in
``core.restoration.registry``); the data partitions in ``core.restoration.data``; the monitor in
``core.restoration.monitor``; the run store in ``core.restoration.store``.

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
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

import core.restoration.methods  # noqa: F401  (importing the package registers every method)
from core.base.cache import atomic_dir, atomic_write_text, stable_hash
from core.base.errors import Cancelled, InputError
from core.base.paths import is_adapter_dir
from core.base.progress import Progress
from core.geometry.basin import BasinConfig, safety_basin
from core.restoration.context import RestoreContext
from core.restoration.data import DataConfig, restoration_data
from core.restoration.monitor import Monitor, MonitorConfig
from core.restoration.registry import METHODS, RestoreOutput, method
from core.restoration.store import load_record, runs_dir
from core.world.capability import summary as capability_summary
from core.world.data import Example, harmful_splits
from core.world.demo import eval_sets
from core.world.evaluation import EvalConfig, config_key, evaluate_model, outcome_flags, summary
from core.world.evaluation import with_capability as with_capability_report
from core.world.judge import Judge, judge_identity, keyword_judge, load_judge
from core.world.models import ModelSpec, fingerprint, load_model, load_tokenizer, validate


def require_adapter(spec: ModelSpec, method_name: str) -> None:
    """LoRA-only methods refuse a full fine-tune with the list of methods that do apply."""
    if is_adapter_dir(spec.finetuned):
        return
    full = [n for n, m in METHODS.items() if not m.needs_adapter]
    raise InputError(
        f"Method '{method_name}' works on LoRA adapters, but '{spec.finetuned or spec.base}' is not a PEFT adapter.",
        f"pass an adapter directory with --finetuned, or use a method that takes full weights: {', '.join(full)}.",
    )


@dataclass(frozen=True)
class RunRequest:
    method: str
    config: Any
    seed: int = 0
    data: DataConfig = DataConfig()
    monitor: MonitorConfig = MonitorConfig()
    eval: EvalConfig = EvalConfig()
    evaluate: bool = True  # before/after on the held-out split (off for trajectory-only runs)
    judge: str | None = None  # the harmfulness judge of the monitor and before/after (``load_judge``)
    judge_label: str = ""
    capability_items: int = 40  # general-capability items per task before/after (0: none); not in the id


def run_id(pair: dict[str, ModelSpec], request: RunRequest) -> str:
    """The run's id: its inputs' hash; a judge other than the keyword judge adds its identity (so the
    keyword judge's runs keep the ids they had before judges were selectable)."""
    judge = [judge_identity(request.judge, request.judge_label)] if request.judge else []
    return stable_hash(
        fingerprint(pair["base"]),
        fingerprint(pair["finetuned"]),
        request.method,
        asdict(request.config),
        request.seed,
        asdict(request.data),
        asdict(request.monitor),
        config_key(request.eval),
        request.evaluate,
        "restore-v1",
        *judge,
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
        self.progress.update(
            self._fraction(len(self.record["steps"]) + 1), f"step {len(self.record['steps'])}: monitoring"
        )
        row = {
            "step": len(self.record["steps"]),
            **self.monitor(model, extra.get("performance")),
            **extra,
            "wall_s": time.monotonic() - self.t0,
        }
        for key, value in row.items():
            if isinstance(value, float) and not math.isfinite(value) and key.endswith("_loss"):
                row[key] = None
        self.record["steps"].append(row)
        self.save()
        self.progress.update(
            self._fraction(len(self.record["steps"])),
            f"step {row['step']}: harmful {row['harmful_rate']:.0f}% task {row['task_exact_match']:.0f}%",
            row,
        )
        return row


def _evaluate(
    spec: ModelSpec,
    model,
    tok,
    seed: int,
    extra: list[Example],
    config: EvalConfig,
    progress: Progress,
    judge: Judge = keyword_judge,
) -> dict:
    return summary(_report(spec, model, tok, seed, extra, config, progress, judge))


def _report(
    spec: ModelSpec,
    model,
    tok,
    seed: int,
    extra: list[Example],
    config: EvalConfig,
    progress: Progress,
    judge: Judge = keyword_judge,
):
    return evaluate_model(model, tok, eval_sets(seed, extra=extra), fingerprint(spec), config, judge, progress)


def _judge(request: RunRequest) -> Judge:
    return load_judge(request.judge, request.judge_label)


def with_capability(record: dict, request: RunRequest, progress: Progress | None = None) -> dict:
    """Before/after general capability (``request.capability_items`` per task) in a finished run's
    record, computed where missing (older runs, another item count) and stored; the fine-tune's
    scores are memoised across runs, so each new run scores only its restored model."""
    items = request.capability_items
    if not items or not request.evaluate or record.get("status") != "done":
        return record
    if all(record.get(n, {}).get("capability", {}).get("items") == items for n in ("before", "after")):
        return record
    progress = progress or Progress()
    models = {"before": ModelSpec(**record["finetuned_spec"]), "after": restored_spec(record)}
    tok = load_tokenizer(models["after"])
    for i, (name, spec) in enumerate(models.items()):
        report = with_capability_report(
            {}, load_model(spec), tok, fingerprint(spec), items, progress.stage(i / 2, (i + 1) / 2)
        )
        cap = report["capability"]
        record[name]["general_capability"] = cap["mean_acc"]["rate"]
        record[name].setdefault("intervals", {})["general_capability"] = {
            k: cap["mean_acc"][k] for k in ("ci_low", "ci_high", "n")
        }
        record[name]["capability"] = {**capability_summary(cap), "items": items}
        if name == "after" and "after_flags" in record:
            record["after_flags"]["general_capability"] = [bool(c) for t in cap["tasks"].values() for c in t["correct"]]
    atomic_write_text(
        runs_dir() / record["id"] / "record.json",
        json.dumps({k: v for k, v in record.items() if not k.endswith("_extra")}, indent=1, default=float),
    )
    return record


def after_flags(record: dict, progress: Progress | None = None) -> dict[str, list[bool]]:
    """The restored model's per-example outcomes on the held-out split (stored in the record;
    for a run recorded before they were, read back from the evaluation cache)."""
    if "after_flags" in record:
        return record["after_flags"]
    spec = restored_spec(record)
    report = _report(
        spec, load_model(spec), load_tokenizer(spec), record["seed"], [], EvalConfig(), progress or Progress()
    )
    return outcome_flags(report)


def add_visage(
    record: dict, seed: int = 0, progress: Progress | None = None, judge: str | None = None, judge_label: str = ""
) -> dict:
    """Before/after VISAGE (the basin analysis of ``core.geometry.basin``, default config, with the
    run's judge) of a finished run, stored into its record; the fine-tuned model's basin is cached
    across runs."""
    if "visage" in record.get("after", {}):
        return record
    models = {"before": ModelSpec(**record["finetuned_spec"]), "after": restored_spec(record)}
    config = BasinConfig(seed=seed, judge=judge, judge_label=judge_label)
    result = safety_basin(models, harmful_splits(seed)["eval"], config, progress)
    for name in models:
        record.setdefault(name, {})["visage"] = result[name]["visage"]
    atomic_write_text(
        runs_dir() / record["id"] / "record.json",
        json.dumps({k: v for k, v in record.items() if not k.endswith("_extra")}, indent=1, default=float),
    )
    return record


def restore(
    pair: dict[str, ModelSpec],
    request: RunRequest,
    extra: list[Example] | None = None,
    progress: Progress | None = None,
) -> dict:
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
    judge = _judge(request)
    rid = run_id(pair, request)
    existing = load_record(rid)
    if existing and existing["status"] == "done" and (runs_dir() / rid / "restored").exists():
        existing = with_capability(existing, request, progress)
        existing = _with_extra(existing, extra, request, progress)
        progress.update(1.0, "run already done", existing)
        return existing

    data = restoration_data(pair["finetuned"], request.seed, request.data, progress.stage(0, 0.05))
    tok = load_tokenizer(pair["finetuned"])
    base_model = load_model(pair["base"])
    monitor = Monitor(base_model, tok, data, request.monitor, judge)
    del base_model
    record = {
        "id": rid,
        "method": m.name,
        "config": asdict(request.config),
        "seed": request.seed,
        "data": asdict(request.data),
        "judge": judge_identity(request.judge, request.judge_label),
        "data_fingerprint": data.fingerprint(),
        "base": pair["base"].base,
        "finetuned": pair["finetuned"].finetuned or pair["finetuned"].base,
        "finetuned_spec": asdict(pair["finetuned"]),
        "models": {k: fingerprint(v) for k, v in pair.items()},
        "status": "running",
        "steps": [],
        "started": time.time(),
        "artifact": None,
        "notes": {},
        "error": None,
        "pid": os.getpid(),
    }
    recorder = _Recorder(
        record, monitor, progress.stage(0.05, 0.8), getattr(request.config, "expected_steps", lambda: 10)()
    )
    (runs_dir() / rid).mkdir(parents=True, exist_ok=True)
    recorder.save()
    ctx = RestoreContext(
        pair["base"], pair["finetuned"], tok, data, recorder, recorder.method_progress(), request.seed, judge
    )
    t0 = time.monotonic()
    try:
        out = m.run(ctx, request.config)
    except (Cancelled, KeyboardInterrupt):
        record.update(status="cancelled", finished=time.time())
        recorder.save()
        raise
    except Exception as err:  # noqa: BLE001 - any failure is recorded, then re-raised
        record.update(
            status="failed", error=str(err).splitlines()[0] if str(err) else type(err).__name__, finished=time.time()
        )
        recorder.save()
        raise
    record["wall_s"] = time.monotonic() - t0
    record["notes"] = out.notes
    _save_restored(rid, out, pair, tok)
    record["artifact"] = out.kind
    spec = restored_spec(record)
    if request.evaluate:
        ev = progress.stage(0.8, 1.0)
        record["before"] = None  # the record's order; evaluated once the restored model is freed (one in memory)
        after = _report(spec, out.model, tok, request.seed, [], request.eval, ev.stage(0, 0.3), judge)
        record["after"], record["after_flags"] = summary(after), outcome_flags(after)
        out = None
        finetuned = load_model(pair["finetuned"])
        record["before"] = _evaluate(
            pair["finetuned"], finetuned, tok, request.seed, [], request.eval, ev.stage(0.3, 0.6), judge
        )
        del finetuned
    record.update(status="done", finished=time.time())
    recorder.save()
    record = with_capability(record, request, progress.stage(0.8, 1.0).stage(0.6, 1.0))
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


def _with_extra(record: dict, extra: list[Example] | None, request: RunRequest, progress: Progress) -> dict:
    """Before/after on a user's extra harmful prompts, reported separately (not stored)."""
    if not extra or not request.evaluate:
        return record
    record = dict(record)
    ft = ModelSpec(**record["finetuned_spec"])
    spec = restored_spec(record)
    tok = load_tokenizer(spec)
    for name, s in (("before", ft), ("after", spec)):
        full = _evaluate(
            s, load_model(s), tok, request.seed, extra, request.eval, progress.stage(0.9, 1.0), _judge(request)
        )
        record[f"{name}_extra"] = {k: v for k, v in full.items() if k.startswith("extra_")}
    return record
