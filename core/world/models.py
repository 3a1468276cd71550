"""Model layer: load a base (HF id, local directory or GGUF file) and a fine-tuned model
(PEFT adapter directory on that base, or a full checkpoint), pick device and dtype, and give
each a stable content fingerprint for caching.

GGUF files are dequantized once by transformers (via the ``gguf`` package) and kept as
safetensors in the cache, so later loads are plain safetensors reads.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from peft import PeftModel
from safetensors import safe_open
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from core.base.cache import atomic_dir, results_store, stable_hash, stored
from core.base.errors import InputError
from core.base.paths import cache_dir
from core.base.scaleout import GPU_ACTOR
from core.world.hub import hub_identity, hub_snapshot, looks_like_hub_id
from core.world.placement import (
    check_device_map,
    dispatch_kwargs,
    model_offloaded,
    offloaded,
    planned_map,
    wants_dispatch,
)

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".gguf")
FINGERPRINT_FILES = ("chat_template.jinja", "tokenizer.json", "tokenizer.model", "generation_config.json")
ARCH_KEYS = ("model_type", "hidden_size", "num_hidden_layers", "vocab_size", "intermediate_size")


ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")  # Llama-family linear layers


@dataclass(frozen=True)
class ModelSpec:
    """What to load. ``base`` is a hub id, directory or .gguf file; ``finetuned`` a PEFT adapter (on
    ``base``) or a full checkpoint, as a directory or hub id. ``revision``/``finetuned_revision`` pick a
    hub branch, tag or commit; ``device_map`` "auto" places the model with accelerate (within
    ``max_memory``, e.g. "0=20GiB,cpu=60GiB"), offloading what does not fit."""

    base: str
    finetuned: str | None = None
    device: str = "auto"
    dtype: str = "auto"
    trust_remote_code: bool = False
    revision: str | None = None
    finetuned_revision: str | None = None
    device_map: str = "none"
    max_memory: str | None = None

    def base_only(self) -> "ModelSpec":
        return replace(self, finetuned=None, finetuned_revision=None)


def resolve_device(device: str = "auto") -> torch.device:
    """cuda, then mps, then cpu, unless ``device`` names one (checked: it must exist here)."""
    if device != "auto":
        return check_device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def check_device(device: str) -> torch.device:
    """``device`` as a torch device, or a one-line error when it is malformed or absent here."""
    if not re.fullmatch(r"cpu|mps|cuda(:\d+)?", device):
        raise InputError(f"Unknown device '{device}'.", "use auto, cpu, cuda, cuda:N or mps.")
    if device.startswith("cuda:") and os.environ.get(GPU_ACTOR):
        device = "cuda"  # a Ray GPU actor: the driver's cuda:N is this actor's only GPU (CUDA_VISIBLE_DEVICES)
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(
            f"Device '{device}' was asked for, but this machine has no CUDA device.", "use --device cpu or auto."
        )
    if device.startswith("cuda:") and int(device[5:]) >= torch.cuda.device_count():
        raise InputError(
            f"Device '{device}' does not exist ({torch.cuda.device_count()} CUDA devices).", "use cuda:0 or auto."
        )
    if device == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise InputError("Device 'mps' was asked for, but MPS is not available here.", "use --device cpu or auto.")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """bf16 on GPU, fp32 on CPU, unless ``dtype`` names one (float32, bfloat16, float16)."""
    if dtype == "auto":
        return torch.bfloat16 if device.type in ("cuda", "mps") else torch.float32
    try:
        return {
            "float32": torch.float32,
            "fp32": torch.float32,
            "bfloat16": torch.bfloat16,
            "bf16": torch.bfloat16,
            "float16": torch.float16,
            "fp16": torch.float16,
        }[dtype]
    except KeyError:
        raise InputError(f"Unknown dtype '{dtype}'.", "use one of auto, float32, bfloat16, float16.") from None


def safetensors_intact(path: Path) -> bool:
    """True when ``path``'s safetensors header parses and the file is as long as the header says
    (a truncated copy fails this without reading the tensors)."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if n > min(size - 8, 100_000_000):  # a header longer than the file: random bytes, cut file
                return False
            header = json.loads(f.read(n))
        ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"]
        return size == 8 + n + max(ends, default=0)
    except (OSError, ValueError, KeyError, TypeError):
        return False


def file_digest(path: Path) -> str:
    """sha256 of a file's content, memoised on (path, size, mtime) so large files hash once."""
    st = path.stat()
    key = f"file-digest:{path.resolve()}:{st.st_size}:{st.st_mtime_ns}"
    with results_store() as store:
        known = stored(store, key)
    if isinstance(known, str):
        return known
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            h.update(chunk)
    digest = h.hexdigest()
    with results_store() as store:
        store[key] = digest
    return digest


def dir_fingerprint(path: Path) -> str:
    """Fingerprint of a model/adapter directory: its config files and weight contents."""
    parts = []
    for f in sorted(path.iterdir()):
        if f.suffix in WEIGHT_SUFFIXES or f.name.endswith("config.json") or f.name in FINGERPRINT_FILES:
            parts.append((f.name, file_digest(f)))
    return stable_hash(parts)


def _check_dir(path: Path, what: str) -> None:
    if not path.exists():
        raise InputError(
            f"{what} path '{path}' does not exist.", "pass an existing directory, .gguf file or Hugging Face id."
        )
    if path.is_dir() and not (path / "config.json").exists() and not (path / "adapter_config.json").exists():
        raise InputError(
            f"{what} directory '{path}' is not a model: it has no config.json or adapter_config.json.",
            "point at a directory saved with save_pretrained (model or PEFT adapter).",
        )


def gguf_to_safetensors(gguf_path: Path) -> Path:
    """Dequantize a GGUF file once into a safetensors model directory in the cache; return it."""
    target = cache_dir() / "models" / f"gguf-{file_digest(gguf_path)[:16]}"
    if (target / "config.json").exists():
        return target
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config._name_or_path = gguf_path.stem
    with atomic_dir(target) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return target


def resolve_base(base: str, revision: str | None = None, trust_remote_code: bool = False) -> str:
    """A loadable location for ``base``: GGUF files become cached safetensors directories, hub ids
    their snapshot folder in the HF cache (at ``revision``)."""
    path = Path(base).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise InputError(f"GGUF file '{base}' does not exist.", "pass the path of an existing .gguf file.")
        return str(gguf_to_safetensors(path))
    if looks_like_hub_id(base):
        return str(hub_snapshot(base, revision, trust_remote_code))
    _check_dir(path, "Base model")
    if not (path / "config.json").exists():
        raise InputError(
            f"Base model directory '{base}' is an adapter, not a model.",
            "pass the base model as --base and the adapter as --finetuned.",
        )
    return str(path)


def finetuned_path(spec: ModelSpec) -> Path | None:
    """The fine-tuned model's local directory: the path given, or a hub id's snapshot folder."""
    if not spec.finetuned:
        return None
    if looks_like_hub_id(spec.finetuned):
        return hub_snapshot(spec.finetuned, spec.finetuned_revision, spec.trust_remote_code)
    return Path(spec.finetuned).expanduser()


def _base_of(spec: ModelSpec) -> str:
    return resolve_base(spec.base, spec.revision, spec.trust_remote_code)


def model_fingerprint(path: str | Path) -> str:
    """A hub snapshot is named by its repository and commit; any other directory by its content."""
    return hub_identity(path) or dir_fingerprint(Path(path))


def fingerprint(spec: ModelSpec) -> str:
    """Stable content fingerprint of the model ``spec`` describes (weights, not paths) and of the
    precision it runs in (device kind and dtype: bf16 answers differ from fp32 ones; the thread
    count does not enter)."""
    base = _base_of(spec)
    base_fp = model_fingerprint(base) if Path(base).is_dir() else f"hub:{base}"
    ft = finetuned_path(spec)
    ft_fp = model_fingerprint(ft) if ft is not None else None
    device = resolve_device(spec.device)
    precision = f"{device.type}/{str(resolve_dtype(spec.dtype, device)).removeprefix('torch.')}"
    if precision == "cpu/float32":  # the original key: answers computed before precision was keyed stay valid
        return stable_hash(base_fp, ft_fp)
    return stable_hash(base_fp, ft_fp, precision)


def load_tokenizer(spec: ModelSpec) -> PreTrainedTokenizerBase:
    """Tokenizer of the base (or of a full fine-tuned checkpoint), left-padded, with a chat template."""
    source = _base_of(spec)
    ft = finetuned_path(spec)
    if ft is not None and (ft / "tokenizer_config.json").exists():
        source = str(ft)
    try:
        tok = AutoTokenizer.from_pretrained(source, trust_remote_code=spec.trust_remote_code)
    except (OSError, ValueError) as err:
        raise InputError(
            f"Could not load a tokenizer for '{spec.finetuned or spec.base}': {str(err).strip().splitlines()[0]}",
            "pass a model directory saved with its tokenizer (or a reachable Hugging Face id).",
        ) from None
    if not tok.chat_template:
        raise InputError(
            f"Model '{spec.base}' has no chat template.",
            "use an instruct/chat model, or save a tokenizer with a chat_template into the model directory.",
        )
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    return tok


def _arch(config) -> dict:
    d = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    return {k: d.get(k) for k in ARCH_KEYS}


def check_adapter_matches(base_model: PreTrainedModel, adapter_dir: Path) -> None:
    """Raise InputError if the adapter's LoRA shapes or target modules do not fit the base."""
    cfg = json.loads((adapter_dir / "adapter_config.json").read_text())
    files = list(adapter_dir.glob("adapter_model.safetensors"))
    if not files:
        raise InputError(
            f"Adapter '{adapter_dir}' has no adapter_model.safetensors.",
            "save the adapter with PeftModel.save_pretrained (safetensors).",
        )
    modules = dict(base_model.named_modules())
    with safe_open(str(files[0]), "pt") as fh:
        for key in fh.keys():
            if ".lora_A." not in key and ".lora_B." not in key:
                continue
            name = key.split(".lora_")[0].replace("base_model.model.", "", 1)
            module = modules.get(name)
            if module is None or not hasattr(module, "weight"):
                raise InputError(
                    f"Adapter '{adapter_dir}' targets '{name}', "
                    f"which base model '{cfg.get('base_model_name_or_path')}' does not have.",
                    "pass the base model this adapter was trained on (--base).",
                )
            shape = fh.get_slice(key).get_shape()
            out_f, in_f = module.weight.shape
            ok = shape[1] == in_f if ".lora_A." in key else shape[0] == out_f
            if not ok:
                raise InputError(
                    f"Adapter '{adapter_dir}' does not fit the base model: "
                    f"{key} has shape {tuple(shape)} but '{name}' is {tuple(module.weight.shape)}.",
                    "pass the base model this adapter was trained on (--base).",
                )


def load_model(spec: ModelSpec, merge: bool = False) -> PreTrainedModel:
    """Load the model ``spec`` describes in eval mode; LoRA adapters stay unmerged unless ``merge``.
    With ``device_map`` "auto", or weights larger than the accelerator's free memory, accelerate
    places it (``hf_device_map``) instead of one ``.to(device)``."""
    device = resolve_device(spec.device)
    dtype = resolve_dtype(spec.dtype, device)
    base = _base_of(spec)
    kwargs = dict(dtype=dtype, trust_remote_code=spec.trust_remote_code)
    ft = finetuned_path(spec)
    if ft is not None:
        _check_dir(ft, "Fine-tuned model")
    full_checkpoint = ft is not None and (ft / "config.json").exists() and not (ft / "adapter_config.json").exists()
    weights_dir = ft if full_checkpoint else base
    dispatch = wants_dispatch(spec.device_map, weights_dir, dtype, device)
    if dispatch:
        offload = cache_dir() / "offload" / stable_hash(str(weights_dir), str(dtype))[:16]
        kwargs.update(dispatch_kwargs(spec.max_memory, offload))
    if full_checkpoint:
        base_cfg = AutoConfig.from_pretrained(base, trust_remote_code=spec.trust_remote_code)
        ft_cfg = AutoConfig.from_pretrained(ft, trust_remote_code=spec.trust_remote_code)
        if _arch(base_cfg) != _arch(ft_cfg):
            raise InputError(
                f"Fine-tuned checkpoint '{ft}' does not match base '{spec.base}': "
                f"{_arch(ft_cfg)} vs {_arch(base_cfg)}.",
                "pass the checkpoint's own base model with --base.",
            )
        model = AutoModelForCausalLM.from_pretrained(ft, **kwargs)
    else:
        try:
            model = AutoModelForCausalLM.from_pretrained(base, **kwargs)
        except OSError as err:
            raise InputError(
                f"Could not load base model '{spec.base}': {str(err).splitlines()[0]}",
                "check the id or path (no network here: use a local directory or .gguf).",
            ) from None
        if ft is not None:
            check_adapter_matches(model, ft)
            if "disk" in {str(v) for v in (getattr(model, "hf_device_map", None) or {}).values()}:
                raise InputError(
                    f"Adapter '{spec.finetuned}' cannot be put on a base offloaded to disk (peft cannot load onto it).",
                    "give --max-memory room for the base in memory, or merge the adapter into a full checkpoint.",
                )
            model = PeftModel.from_pretrained(model, str(ft))
            if merge and not model_offloaded(model):  # merging into offloaded weights is impossible
                model = model.merge_and_unload()
    if not dispatch:
        model.to(device)
    model.eval()
    return model


def validate(spec: ModelSpec) -> None:
    """Check paths, tokenizer, chat template and adapter fit without loading any weights.

    Run before long jobs so a bad second model fails in seconds, not after the first is evaluated.
    """
    check_device_map(spec.device_map, spec.max_memory)
    load_tokenizer(spec)
    ft = finetuned_path(spec)
    if ft is None:
        return
    _check_dir(ft, "Fine-tuned model")
    if (ft / "adapter_config.json").exists():
        config = AutoConfig.from_pretrained(_base_of(spec), trust_remote_code=spec.trust_remote_code)
        with torch.device("meta"):
            skeleton = AutoModelForCausalLM.from_config(config, trust_remote_code=spec.trust_remote_code)
        check_adapter_matches(skeleton, ft)


def planned_offload(spec: ModelSpec) -> list[str]:
    """Modules that loading ``spec`` would offload (to disk, or to the CPU beside a GPU), computed
    on a meta skeleton without reading weights; empty when the model loads whole."""
    device = resolve_device(spec.device)
    dtype = resolve_dtype(spec.dtype, device)
    ft = finetuned_path(spec)
    full = ft is not None and (ft / "config.json").exists() and not (ft / "adapter_config.json").exists()
    source = ft if full else _base_of(spec)
    if not wants_dispatch(spec.device_map, source, dtype, device):
        return []
    config = AutoConfig.from_pretrained(source, trust_remote_code=spec.trust_remote_code)
    return offloaded(planned_map(config, dtype, spec.max_memory, spec.trust_remote_code))
