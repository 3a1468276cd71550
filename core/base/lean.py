"""Weight-sized tensors held one at a time (issue 13, "memory near the model's size").

The landscape and basin perturb every weight as theta0 + sum_k c_k d_k. Stored, theta0 and each
direction d_k are one copy of the perturbed weights each. Regenerated ("lean"), each direction is
a mapping that recomputes one tensor when it is read, from its seed: the CPU generator's state at
the start of each tensor is kept (about 5 KB a tensor), so a replayed tensor is the same draw as
in one pass over all tensors in order, bit for bit; theta0 is kept on disk in a scratch
safetensors file written tensor by tensor and read back one tensor at a time with ``safe_open``
(on the CPU), or on the host beside an accelerator. The answers are the same bits either way; the
stored path is faster (no regeneration, no disk reads), so ``auto`` keeps it when the extra copies
fit comfortably in the device's free memory.

Theta0 is the in-memory weights, not a model file: a LoRA fine-tune is merged in memory (and a
model may be cast to another dtype on loading), so the model's own safetensors hold other bits.
"""

from __future__ import annotations

import ctypes
import json
import os
import tempfile
import weakref
from abc import abstractmethod
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict

import psutil
import torch
from safetensors import safe_open

from core.base.errors import InputError
from core.base.options import option
from core.base.paths import cache_dir
from core.base.tensors import to_host

MEMORY_CHOICES = ("auto", "stored", "regenerate")
COMFORT = 0.5  # auto stores the extra copies when they take at most this share of the free memory
M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter
_DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64"}


def direction_memory_option() -> str:
    """The ``--direction-memory`` option of the analyses that perturb the weights (never changes an answer)."""
    return option(
        "auto",
        "where directions and theta0 live: stored copies (fastest), regenerate (each tensor recomputed from its "
        "seed when needed, theta0 on disk or the host: memory near the model's size), or auto (stored when the "
        "copies fit comfortably in free memory); the answer is the same",
        label="Direction memory",
        choices=MEMORY_CHOICES,
    )


def answer_config(config) -> dict:
    """``asdict(config)`` without ``direction_memory``: the fields an answer depends on (cache keys)."""
    return {k: v for k, v in asdict(config).items() if k != "direction_memory"}


def free_bytes(device: torch.device) -> int:
    """Free memory where the weights live: the accelerator's, or the host's available memory."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    return psutil.virtual_memory().available


def choose_path(mode: str, extra_bytes: int, device: torch.device) -> str:
    """``stored`` or ``regenerate``: ``mode`` itself unless ``auto``, which stores when ``extra_bytes``
    take at most ``COMFORT`` of the free memory."""
    if mode not in MEMORY_CHOICES:
        raise InputError(f"Unknown --direction-memory '{mode}'.", f"use one of {', '.join(MEMORY_CHOICES)}.")
    path = mode if mode != "auto" else "stored" if extra_bytes <= COMFORT * free_bytes(device) else "regenerate"
    if path == "regenerate":
        return_freed_memory()
    return path


def return_freed_memory() -> None:
    """Make glibc give freed blocks of 1 MiB and more back to the system at once (a fixed mmap
    threshold): by default its threshold grows with the blocks freed, so the per-tensor temporaries
    of the lean path stay in the heap, counted in the process's memory (about one model's worth on
    SmolLM2-135M). Process-wide; nothing on other C libraries."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(M_MMAP_THRESHOLD, 1 << 20)
        libc.malloc_trim(0)
    except (OSError, AttributeError):
        pass


def nbytes(tensors: Iterable[torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


class Held:
    """Bytes of the tensors lean mappings have handed out that are still alive, and their peak (a
    counter: tests assert that no full-size copy was ever held)."""

    def __init__(self) -> None:
        self.now = self.peak = 0

    def track(self, t: torch.Tensor) -> torch.Tensor:
        n = t.numel() * t.element_size()
        self.now += n
        self.peak = max(self.peak, self.now)
        weakref.finalize(t, self._drop, n)
        return t

    def _drop(self, n: int) -> None:
        self.now -= n

    def reset(self) -> None:
        self.peak = self.now


HELD = Held()


class DiskTensors(Mapping):
    """Tensors written one by one to a scratch safetensors file (never all in memory), each read
    back alone with ``safe_open`` onto the device it came from; the file goes with the object."""

    def __init__(self, specs: Mapping[str, torch.Tensor], items: Iterable[tuple[str, torch.Tensor]]):
        """``specs``: name -> a tensor of the shape, dtype and device to expect (e.g. the parameter);
        ``items``: (name, tensor) in the same order, consumed one at a time."""
        return_freed_memory()  # its readers' per-tensor temporaries go back to the system
        folder = cache_dir() / "scratch"
        folder.mkdir(parents=True, exist_ok=True)
        fd, self.path = tempfile.mkstemp(suffix=".safetensors", dir=folder)
        self._cleanup = weakref.finalize(self, _unlink, self.path)
        self.devices = {n: t.device for n, t in specs.items()}
        with os.fdopen(fd, "wb") as f:
            f.write(_header(specs))
            names = iter(specs)
            for name, t in items:
                if name != next(names, None) or t.shape != specs[name].shape or t.dtype != specs[name].dtype:
                    raise ValueError(f"tensor '{name}' is not the next one of the file's header")
                f.write(to_host(t.detach().contiguous().reshape(-1).view(torch.uint8), torch.uint8))

    def __getitem__(self, name: str) -> torch.Tensor:
        with safe_open(self.path, framework="pt", device="cpu") as f:
            t = f.get_tensor(name)
        return HELD.track(t.to(self.devices[name]))

    def __iter__(self) -> Iterator[str]:
        return iter(self.devices)

    def __len__(self) -> int:
        return len(self.devices)

    def close(self) -> None:
        self._cleanup()


def _unlink(path: str) -> None:
    if os.path.exists(path):
        os.unlink(path)


def _header(specs: Mapping[str, torch.Tensor]) -> bytes:
    """The safetensors header (length, JSON padded to 8 bytes) of ``specs`` in order."""
    entries, offset = {}, 0
    for name, t in specs.items():
        if t.dtype not in _DTYPES:
            raise ValueError(f"no safetensors dtype for {t.dtype}")
        size = t.numel() * t.element_size()
        entries[name] = {"dtype": _DTYPES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(entries).encode()
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text


class HostTensors(Mapping):
    """Copies on the host (pinned when CUDA is up) of tensors that live on an accelerator, each
    copied back to its device when read."""

    def __init__(self, items: Iterable[tuple[str, torch.Tensor]]):
        """``items``: (name, tensor) pairs, consumed one at a time (each may be a temporary)."""
        pin = torch.cuda.is_available()
        self.host, self.devices = {}, {}
        for n, t in items:
            self.host[n] = t.detach().cpu().pin_memory() if pin else t.detach().cpu()
            self.devices[n] = t.device

    def __getitem__(self, name: str) -> torch.Tensor:
        return HELD.track(self.host[name].to(self.devices[name]))

    def __iter__(self) -> Iterator[str]:
        return iter(self.host)

    def __len__(self) -> int:
        return len(self.host)

    def close(self) -> None:
        self.host.clear()


def theta0_copy(params: Mapping[str, torch.Tensor], path: str) -> Mapping[str, torch.Tensor]:
    """Theta0 of ``params``: clones (``stored``), or off the device (``regenerate``): a scratch file
    on the CPU, host copies beside an accelerator."""
    if path == "stored":
        return {n: p.detach().clone() for n, p in params.items()}
    return off_device(params, params.items())


def off_device(specs: Mapping[str, torch.Tensor], items: Iterable[tuple[str, torch.Tensor]]) -> Mapping:
    """Tensors kept off the device and read back one at a time: a scratch file beside CPU weights
    (``DiskTensors``: ``specs`` gives each shape, dtype and device), host copies beside an accelerator."""
    if all(t.device.type == "cpu" for t in specs.values()):
        return DiskTensors(specs, items)
    return HostTensors(items)


def close(tensors: Mapping) -> None:
    """Release a lean mapping's file or host copies (a dict: nothing to do)."""
    if hasattr(tensors, "close"):
        tensors.close()


class Gaussians:
    """Element-wise standard Gaussians of one CPU generator seeded with ``seed``, a tensor per name
    in first-drawn order, each replayable alone: the generator's state at each tensor's start is kept."""

    def __init__(self, seed: int):
        self.gen = torch.Generator().manual_seed(seed)
        self.states: dict[str, torch.Tensor] = {}
        self.next_state = self.gen.get_state()

    def draw(self, name: str, shape: torch.Size) -> torch.Tensor:
        """The draw of ``name``: new names continue the sequence, known names replay their draw."""
        if name not in self.states:
            self.states[name] = self.next_state
            self.gen.set_state(self.next_state)
            out = torch.randn(shape, generator=self.gen)
            self.next_state = self.gen.get_state()
            return out
        self.gen.set_state(self.states[name])
        return torch.randn(shape, generator=self.gen)


class LazyDirection(Mapping):
    """A direction over named weights whose tensors are recomputed when read (``make(name)``)."""

    def __init__(self, shapes: Mapping[str, torch.Tensor]):
        self.names = list(shapes)

    @abstractmethod
    def make(self, name: str) -> torch.Tensor:
        """The direction's tensor for weight ``name``, recomputed (each subclass says from what)."""

    def __getitem__(self, name: str) -> torch.Tensor:
        return HELD.track(self.make(name))

    def __iter__(self) -> Iterator[str]:
        return iter(self.names)

    def __len__(self) -> int:
        return len(self.names)
