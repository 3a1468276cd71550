"""Checks of a model's files before anything loads: the path exists (a missing local path is a
missing path, not a Hub id), ``config.json`` / ``adapter_config.json`` parse and say what they
are, every safetensors file is as long as its header says, a GGUF file parses. Each failure is one
``InputError`` that names the file and a fix; a Hub id is left to the loader."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from core.base.errors import InputError
from core.base.paths import cache_dir
from core.world.models import file_digest, safetensors_intact

WEIGHTS = ("*.safetensors", "*.bin", "*.pt", "*.pth")


def looks_local(name: str) -> bool:
    """True when ``name`` is meant as a local path: it exists, starts like a path (``.``, ``/``,
    ``~``), ends in ``.gguf``, is not ``org/name``, or its first folder exists here (a typo in a
    relative path, not a Hub id)."""
    if not name:
        return True
    path = Path(name).expanduser()
    if path.exists() or name.startswith((".", "/", "~")) or name.endswith(".gguf") or name.count("/") != 1:
        return True
    return Path(name.split("/")[0]).is_dir()


def check_model_files(base: str, finetuned: str | None) -> None:
    """One-line errors for a base or fine-tune whose local files cannot be a model."""
    if looks_local(base):
        _check_base(Path(base).expanduser(), base)
    if finetuned is not None and looks_local(finetuned):
        _check_finetuned(Path(finetuned).expanduser(), finetuned)


def _missing(given: str, what: str) -> InputError:
    return InputError(f"{what} path '{given}' does not exist.", "pass an existing directory, .gguf file or Hub id.")


def _check_base(path: Path, given: str) -> None:
    if not path.exists():
        raise _missing(given, "Base model")
    if path.suffix == ".gguf":
        return check_gguf(path)
    if not path.is_dir():
        raise InputError(
            f"Base model '{given}' is a file, not a model directory or .gguf file.",
            "pass a directory saved with save_pretrained, a .gguf file or a Hub id.",
        )
    if (path / "adapter_config.json").exists() and not (path / "config.json").exists():
        raise InputError(
            f"Base model directory '{given}' is an adapter, not a model.",
            "pass the base model as --base and the adapter as --finetuned.",
        )
    _check_model_dir(path, given, "Base model")


def _check_finetuned(path: Path, given: str) -> None:
    if not path.exists():
        raise _missing(given, "Fine-tuned model")
    if not path.is_dir():
        raise InputError(
            f"Fine-tuned model '{given}' is a file, not a directory.",
            "pass a PEFT adapter directory or a full checkpoint directory.",
        )
    if (path / "adapter_config.json").exists():
        config = _json_object(path / "adapter_config.json", "Fine-tuned adapter")
        if "peft_type" not in config:
            raise InputError(
                f"Fine-tuned adapter '{path / 'adapter_config.json'}' has no 'peft_type'.",
                "save the adapter with PeftModel.save_pretrained.",
            )
        weights = path / "adapter_model.safetensors"
        if not weights.exists():
            raise InputError(
                f"Adapter '{given}' has no adapter_model.safetensors.",
                "save the adapter with PeftModel.save_pretrained (safetensors).",
            )
        _check_safetensors(weights, "Adapter")
        return
    _check_model_dir(path, given, "Fine-tuned model")


def _check_model_dir(path: Path, given: str, what: str) -> None:
    if not (path / "config.json").exists():
        raise InputError(
            f"{what} directory '{given}' is not a model: it has no config.json or adapter_config.json.",
            "point at a directory saved with save_pretrained (model or PEFT adapter).",
        )
    config = _json_object(path / "config.json", what)
    if not isinstance(config.get("model_type"), str):
        raise InputError(
            f"{what} config '{path / 'config.json'}' has no 'model_type'.",
            'save the model with save_pretrained, which writes it (e.g. "model_type": "llama").',
        )
    files = [f for pattern in WEIGHTS for f in path.glob(pattern)]
    if not files:
        raise InputError(
            f"{what} directory '{given}' has no weights (*.safetensors or *.bin).",
            "save the model with save_pretrained into that directory.",
        )
    for f in files:
        if f.suffix == ".safetensors":
            _check_safetensors(f, what)


def _check_safetensors(path: Path, what: str) -> None:
    if not safetensors_intact(path):
        raise InputError(
            f"{what} weights '{path}' are damaged (truncated or not safetensors).",
            "copy or save the model again.",
        )


def _json_object(path: Path, what: str) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise InputError(
            f"{what} file '{path}' is not valid JSON ({type(err).__name__}).",
            "save the model again with save_pretrained.",
        ) from None
    if not isinstance(value, dict):
        raise InputError(f"{what} file '{path}' is not a JSON object.", "save the model again with save_pretrained.")
    return value


def check_gguf(path: Path) -> None:
    """A GGUF file that has not been converted yet must parse whole (header, metadata and every
    tensor's extent; about 6 s for 100 MB); a converted one (``models.gguf_to_safetensors``'s
    folder, named by the file's digest) is not read again."""
    if (cache_dir() / "models" / f"gguf-{file_digest(path)[:16]}" / "config.json").exists():
        return
    try:
        import gguf  # late: only a .gguf base needs the reader

        reader = gguf.GGUFReader(str(path))
        if not reader.tensors:
            raise ValueError("no tensors")
    except Exception as err:  # the reader raises ValueError, IndexError, struct and numpy errors
        raise InputError(
            f"GGUF file '{path}' is damaged or not GGUF ({type(err).__name__}).",
            "download or copy the .gguf file again.",
        ) from None
