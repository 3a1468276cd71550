"""``compare``: every restoration method on the same pair, seed and data, one table.

Every rate comes with its Wilson 95% interval, and every method is tested against the fine-tune
(and curvature against gradient-ascent, the first paper's C.2 comparison) with an exact McNemar
test on the same held-out prompts: a difference is marked significant at p < 0.05, unadjusted
for the number of comparisons (the p-values are in the answer for any correction a reader prefers).
"""

from __future__ import annotations

from core.base import scaleout
from core.base.paths import is_adapter_dir
from core.base.progress import Progress
from core.base.stats import mcnemar
from core.geometry.basin import BasinConfig, safety_basin
from core.restoration.data import DataConfig
from core.restoration.registry import METHODS, method
from core.restoration.runner import RunRequest, add_visage, after_flags, restore
from core.world.data import Example, harmful_splits
from core.world.evaluation import EvalOptions, eval_config, outcome_flags, summary
from core.world.judge import load_judge
from core.world.model_pair import evaluate_pair
from core.world.models import ModelSpec

TABLE_COLUMNS = ("harmful_rate", "prefill_asr", "task_exact_match", "over_refusal", "general_capability")
PAIRED = (("curvature", "gradient-ascent"),)  # method pairs tested head to head besides each vs the fine-tune
ALPHA = 0.05


def compare(
    pair: dict[str, ModelSpec],
    seed: int = 0,
    methods: list[str] | None = None,
    extra: list[Example] | None = None,
    progress: Progress | None = None,
    visage: bool = False,
    options: EvalOptions = EvalOptions(),
    data: DataConfig = DataConfig(),
) -> dict:
    """Every method (default config) on the same pair, seed and data; one row per model, judged by
    ``options``' judge, with general capability (mean lm-eval ``acc``) on its items per task.

    Rows for the base and the fine-tuned model come first; LoRA-only methods are skipped (and
    listed) when the fine-tune is not an adapter. Runs are cached, so a repeat is instant.
    """
    progress = progress or Progress()
    names = methods or list(METHODS)
    for name in names:
        method(name)
    adapter = is_adapter_dir(pair["finetuned"].finetuned)
    skipped = [n for n in names if METHODS[n].needs_adapter and not adapter]
    names = [n for n in names if n not in skipped]
    judge = load_judge(options.judge, options.judge_label)
    reports = evaluate_pair(
        pair, seed, extra, judge, progress.stage(0, 0.05), eval_config(options), options.capability_items
    )
    extra_cols = ("extra_harmful_rate", "extra_prefill_asr") if extra else ()
    rows = [_row(name, summary(r), extra_cols, 0.0) for name, r in reports.items()]
    flags = {name: outcome_flags(r) for name, r in reports.items()}
    if visage:
        basin_config = BasinConfig(seed=seed, judge=options.judge, judge_label=options.judge_label)
        basins = safety_basin(pair, harmful_splits(seed)["eval"], basin_config, progress.stage(0, 0.05))
        for row in rows:
            row["visage"] = basins[row["model"]]["visage"]
    runs = {}
    shared = (pair, seed, extra, visage, options, data)
    if scaleout.active():  # one method per Ray worker; progress as methods finish
        done = scaleout.map_shards(_remote_run, names, shared, progress=progress.stage(0.05, 1.0))
    else:
        stages = [
            progress.stage(0.05 + 0.95 * i / len(names), 0.05 + 0.95 * (i + 1) / len(names)) for i in range(len(names))
        ]
        done = [_method_run(shared, name, stage) for name, stage in zip(names, stages)]
    for name, (record, method_flags) in zip(names, done):
        runs[name] = record["id"]
        row = _row(name, {**record["after"], **record.get("after_extra", {})}, extra_cols, record["wall_s"])
        flags[name] = method_flags
        if visage:
            row["visage"] = record["after"]["visage"]
        rows.append(row)
    tests = paired_tests(flags, [n for n in names])
    for row in rows:
        row["significant_vs_finetuned"] = ", ".join(
            t["metric"] for t in tests if t["a"] == row["model"] and t["b"] == "finetuned" and t["p_value"] < ALPHA
        )
    return {"table": rows, "runs": runs, "skipped": skipped, "tests": tests}


def _method_run(shared: tuple, name: str, progress: Progress) -> tuple[dict, dict[str, list[bool]]]:
    """One method's run record (with VISAGE if asked) and its per-example outcome flags."""
    pair, seed, extra, visage, options, data = shared
    request = RunRequest(
        name,
        METHODS[name].config(),
        seed,
        data=data,
        eval=eval_config(options),
        judge=options.judge,
        judge_label=options.judge_label,
        capability_items=options.capability_items,
    )
    record = restore(pair, request, extra, progress)
    if visage:
        record = add_visage(record, seed, progress, options.judge, options.judge_label)
    return record, after_flags(record, progress)


def _remote_run(replica: None, shared: tuple, name: str) -> tuple[dict, dict[str, list[bool]]]:
    """``_method_run`` on a Ray worker (its progress stays there; the driver's advances per method)."""
    return _method_run(shared, name, Progress())


def _row(name: str, summary_: dict, extra_cols: tuple, wall_s: float) -> dict:
    """One table row: each rate, its Wilson interval as text, and the wall time."""
    row: dict = {"model": name}
    for c in TABLE_COLUMNS + extra_cols:
        if c not in summary_:  # general capability with --capability-items 0
            continue
        row[c] = summary_[c]
        if ci := summary_.get("intervals", {}).get(c):
            row[f"{c}_ci"] = f"{ci['ci_low']:.1f}–{ci['ci_high']:.1f}"
    row["wall_s"] = wall_s
    return row


def paired_tests(flags: dict[str, dict[str, list[bool]]], methods: list[str]) -> list[dict]:
    """Exact McNemar tests on the same prompts: each method vs the fine-tune, and each pair in
    ``PAIRED`` that ran, for every headline rate."""
    pairs = [(m, "finetuned") for m in methods] + [(a, b) for a, b in PAIRED if a in flags and b in flags]
    out = []
    for a, b in pairs:
        for metric in TABLE_COLUMNS:
            if metric not in flags[a] or metric not in flags[b] or len(flags[a][metric]) != len(flags[b][metric]):
                continue
            test = mcnemar(flags[a][metric], flags[b][metric])
            out.append({"a": a, "b": b, "metric": metric, **test})
    return out
