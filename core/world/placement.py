"""Models larger than one device: when to place a model with accelerate's ``device_map="auto"``,
within which ``max_memory``, and what its placement allows.

A dispatched model whose weights all live on accelerators (one or several) runs every command. One
with weights offloaded to the CPU beside an accelerator, or to disk, runs forward passes only:
offloaded weights are loaded per forward by accelerate's hooks, so in-place perturbations, weight
arithmetic and gradients of those weights are impossible. ``EDITS_WEIGHTS`` says which commands
need more than forward passes; they refuse an offloading placement in one line, before work.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from accelerate import init_empty_weights
from transformers import AutoModelForCausalLM
from transformers.integrations.accelerate import _get_device_map

from core.base.errors import InputError

DEVICE_MAPS = ("none", "auto")
FIT_MARGIN = 0.9  # a model "fits" one accelerator when its weights take at most this share of free memory
_SIZE = re.compile(r"\d+(\.\d+)?\s*(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)?", re.IGNORECASE)

# What each command does to the weights beyond forward passes (commands not named need only forward).
EDITS_WEIGHTS = {
    "correlate": "adds a noise reference to the weights in place",
    "landscape": "perturbs the weights in place and takes their gradient",
    "curvature": "takes Hessian-vector products of the weights",
    "basin": "perturbs the weights in place",
    "restore": "changes the weights",
    "compare": "changes the weights",
    "trajectory": "takes gradient steps on the weights",
    "claims": "runs correlate, landscape, curvature and basin, which edit the weights",
}


def parse_max_memory(text: str | None) -> dict[int | str, str] | None:
    """``"0=20GiB,cpu=60GiB"`` as accelerate's ``max_memory`` ({0: "20GiB", "cpu": "60GiB"})."""
    if not text:
        return None
    out: dict[int | str, str] = {}
    for item in text.split(","):
        key, sep, size = (s.strip() for s in item.partition("="))
        if not sep or not re.fullmatch(r"\d+|cpu|mps|disk", key) or not _SIZE.fullmatch(size):
            raise InputError(
                f"--max-memory item '{item.strip()}' is not DEVICE=SIZE.",
                "write it like --max-memory 0=20GiB,cpu=60GiB (devices: GPU index, cpu, mps, disk).",
            )
        out[int(key) if key.isdigit() else key] = size.replace(" ", "")
    return out


def check_device_map(device_map: str, max_memory: str | None) -> None:
    """One-line errors for a device map or memory limit this loader cannot use."""
    if device_map not in DEVICE_MAPS:
        raise InputError(f"Unknown device map '{device_map}'.", "use --device-map none or auto.")
    parse_max_memory(max_memory)
    if max_memory and device_map != "auto":
        raise InputError("--max-memory was given without --device-map auto.", "add --device-map auto.")


def weight_bytes(model_dir: str | Path, dtype: torch.dtype) -> int:
    """Bytes the weights of a saved model take in ``dtype``, from the safetensors headers alone."""
    itemsize = torch.empty((), dtype=dtype).element_size()
    total = 0
    for path in Path(model_dir).glob("*.safetensors"):
        with open(path, "rb") as f:
            header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
        for key, info in header.items():
            if key != "__metadata__":
                numel = 1
                for n in info["shape"]:
                    numel *= n
                total += numel * itemsize
    return total


def wants_dispatch(device_map: str, model_dir: str | Path, dtype: torch.dtype, device: torch.device) -> bool:
    """True when asked for (``auto``), or when the weights do not fit the chosen accelerator's free memory."""
    if device_map == "auto":
        return True
    if device.type != "cuda" or not Path(model_dir).is_dir():
        return False
    free, _ = torch.cuda.mem_get_info(device)
    return weight_bytes(model_dir, dtype) > FIT_MARGIN * free


def dispatch_kwargs(max_memory: str | None, offload_dir: Path) -> dict:
    """``from_pretrained`` arguments for an accelerate placement."""
    kwargs: dict = {"device_map": "auto", "offload_folder": str(offload_dir)}
    if (limits := parse_max_memory(max_memory)) is not None:
        kwargs["max_memory"] = limits
    return kwargs


def planned_map(config, dtype: torch.dtype, max_memory: str | None, trust_remote_code: bool = False) -> dict:
    """The placement ``from_pretrained(device_map="auto")`` will choose, computed on a meta skeleton
    (no weights read) by transformers' own rule."""
    with init_empty_weights():
        skeleton = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code, dtype=dtype)
    skeleton.tie_weights()
    return _get_device_map(skeleton, "auto", parse_max_memory(max_memory), None)


def offloaded(device_map: dict | None) -> list[str]:
    """Modules a placement keeps off the accelerators (on disk, or on the CPU beside a GPU)."""
    if not device_map:
        return []
    places = {str(v) for v in device_map.values()}
    on_accelerator = any(p not in ("cpu", "disk") for p in places)
    return [k or "the whole model" for k, v in device_map.items() if v == "disk" or (on_accelerator and v == "cpu")]


def device_map_of(model: torch.nn.Module) -> dict | None:
    """A loaded model's accelerate placement (``hf_device_map``, also under a PEFT wrapper); None
    for a model loaded whole."""
    return next((m.hf_device_map for m in model.modules() if getattr(m, "hf_device_map", None)), None)


def model_offloaded(model: torch.nn.Module) -> list[str]:
    """``offloaded`` for a loaded model."""
    return offloaded(device_map_of(model))


def refuse_offloaded(command: str, modules: list[str]) -> None:
    """One-line refusal when ``command`` needs weights that this placement offloads."""
    reason = EDITS_WEIGHTS.get(command)
    if reason and modules:
        shown = ", ".join(modules[:3]) + (f" and {len(modules) - 3} more" if len(modules) > 3 else "")
        raise InputError(
            f"'{command}' {reason}, which weights offloaded by accelerate's placement cannot take ({shown}).",
            "give --max-memory room for the whole model on the accelerators (or more GPUs), or use a smaller model; "
            "evaluate and capability run on an offloaded model.",
        )
