"""Run ``python -m core ARGS`` and write its memory to ``$SCALE_MEMORY_FILE`` (JSON, bytes), for the
process's RSS and, with CUDA, the memory torch allocates on the GPU:

* ``peak``: the peak;
* ``activations``: one batch's activations, the largest rise within a single forward call of a
  model (from the call's start to its peak: hidden states, attention, logits, whatever the call
  allocates and autograd keeps), less the file-backed pages the call faulted in for good (weights
  mmapped from safetensors, read for the first time);
* ``outside``: the peak outside every model forward call (weights, copies, optimizer state,
  gradients, and the activations a backward pass still holds), the quantity issue 13's targets
  bound "with activations of one batch reported apart".

A forward call is a top-level ``nn.Module`` call (the outermost of nested calls, seen through
torch's global module hooks). Each meter's peak is reset at every call's start and end: RSS through
``VmHWM`` and ``/proc/self/clear_refs`` (Linux >= 4.0; where it cannot be reset, ``activations`` is
0 and ``outside`` the peak), CUDA through ``torch.cuda.reset_peak_memory_stats``.

    SCALE_MEMORY_FILE=m.json python bench/peak.py restore --method direction ...
"""

from __future__ import annotations

import atexit
import json
import os
import runpy
import sys

import torch


def status_bytes(key: str, status: str = "/proc/self/status") -> int:
    """One field of a /proc status file (``VmRSS``, ``VmHWM``, ``RssFile``) in bytes; 0 if the file
    cannot be read (a process that has just exited)."""
    try:
        with open(status) as f:
            return next((int(line.split()[1]) * 1024 for line in f if line.startswith(key + ":")), 0)
    except OSError:
        return 0


class RssMeter:
    """The process's resident memory; its peak reset through ``clear_refs``."""

    def __init__(self) -> None:
        self.resettable = self.reset()

    def current(self) -> int:
        return status_bytes("VmRSS")

    def mapped(self) -> int:
        """File-backed resident pages: weights mmapped from safetensors are paged in by the first
        forward that reads them and stay; they are the model's, not the batch's."""
        return status_bytes("RssFile")

    def peak(self) -> int:
        return status_bytes("VmHWM")

    def reset(self) -> bool:
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # VmHWM := VmRSS
            return True
        except OSError:
            return False


class CudaMeter:
    """Memory torch allocates on the current GPU."""

    resettable = True

    def current(self) -> int:
        return torch.cuda.memory_allocated()

    def mapped(self) -> int:
        return 0

    def peak(self) -> int:
        return torch.cuda.max_memory_allocated()

    def reset(self) -> bool:
        torch.cuda.reset_peak_memory_stats()
        return True


class PeakTracker:
    """Splits one meter's peak into forward-call rises and the rest (see the module doc)."""

    def __init__(self, meter) -> None:
        self.meter = meter
        self.start = self.mapped = self.activations = self.highest = self.outside = 0

    def _since_reset(self) -> int:
        """The peak since the last reset, folded into the overall peak."""
        peak = self.meter.peak()
        self.highest = max(self.highest, peak)
        return peak

    def enter(self) -> None:
        if self.meter.resettable:
            self.outside = max(self.outside, self._since_reset())
            self.start, self.mapped = self.meter.current(), self.meter.mapped()
            self.outside = max(self.outside, self.start)
            self.meter.reset()

    def leave(self) -> None:
        if self.meter.resettable:
            paged_in = max(0, self.meter.mapped() - self.mapped)
            self.activations = max(self.activations, self._since_reset() - self.start - paged_in)
            self.meter.reset()

    def report(self) -> dict:
        last = self._since_reset()
        outside = max(self.outside, last) if self.meter.resettable else self.highest
        return {"peak": self.highest, "outside": outside, "activations": self.activations}


class ForwardCalls:
    """Global module hooks that tell every tracker when the outermost forward call starts and ends."""

    def __init__(self, trackers: list[PeakTracker]) -> None:
        self.trackers, self.depth = trackers, 0
        self.handles = [
            torch.nn.modules.module.register_module_forward_pre_hook(self._before),
            torch.nn.modules.module.register_module_forward_hook(self._after, always_call=True),
        ]

    def _before(self, module, args) -> None:
        if self.depth == 0:
            for t in self.trackers:
                t.enter()
        self.depth += 1

    def _after(self, module, args, output) -> None:
        self.depth -= 1
        if self.depth == 0:
            for t in self.trackers:
                t.leave()

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def main() -> None:
    rss = PeakTracker(RssMeter())
    cuda = PeakTracker(CudaMeter()) if torch.cuda.is_available() else None
    ForwardCalls([t for t in (rss, cuda) if t is not None])

    def write() -> None:
        with open(os.environ["SCALE_MEMORY_FILE"], "w") as f:
            json.dump({**rss.report(), "cuda": cuda.report() if cuda else None}, f)

    atexit.register(write)
    sys.argv = ["core", *sys.argv[1:]]
    runpy.run_module("core", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
