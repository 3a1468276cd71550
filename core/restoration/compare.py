"""``compare``: every restoration method on the same pair, seed and data, one table."""

from __future__ import annotations

from core.base.paths import is_adapter_dir
from core.base.progress import Progress
from core.geometry.basin import BasinConfig, safety_basin
from core.restoration.registry import METHODS, method
from core.restoration.runner import RunRequest, add_visage, restore
from core.world.data import Example, harmful_splits
from core.world.evaluation import summary
from core.world.model_pair import evaluate_pair
from core.world.models import ModelSpec

TABLE_COLUMNS = ("harmful_rate", "prefill_asr", "task_exact_match", "over_refusal")


def compare(
    pair: dict[str, ModelSpec],
    seed: int = 0,
    methods: list[str] | None = None,
    extra: list[Example] | None = None,
    progress: Progress | None = None,
    visage: bool = False,
) -> dict:
    """Every method (default config) on the same pair, seed and data; one row per model.

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
    reports = evaluate_pair(pair, seed, extra, progress=progress.stage(0, 0.05))
    extra_cols = ("extra_harmful_rate", "extra_prefill_asr") if extra else ()
    rows = [
        {"model": name, **{c: summary(r)[c] for c in TABLE_COLUMNS + extra_cols}, "wall_s": 0.0}
        for name, r in reports.items()
    ]
    if visage:
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
        row = {
            "model": name,
            **{c: record["after"][c] for c in TABLE_COLUMNS},
            **{c: record["after_extra"][c] for c in extra_cols},
            "wall_s": record["wall_s"],
        }
        if visage:
            row["visage"] = record["after"]["visage"]
        rows.append(row)
    return {"table": rows, "runs": runs, "skipped": skipped}
