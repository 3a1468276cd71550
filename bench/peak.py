"""Run ``python -m core ARGS`` and write its memory to ``$SCALE_MEMORY_FILE`` (JSON, bytes):

* ``peak``: the process's peak RSS;
* ``activations``: one batch's activations, the largest rise of RSS within a single forward call
  of a model (from the call's start to its peak: hidden states, attention, logits, whatever the
  call allocates and autograd keeps);
* ``outside``: the peak RSS outside every model forward call (weights, copies, optimizer state,
  gradients, and the activations a backward pass still holds), the quantity issue 13's targets
  bound "with activations of one batch reported apart";
* ``cuda``: with CUDA, ``torch.cuda.max_memory_allocated()``.

A forward call is a top-level ``nn.Module`` call (the outermost of nested calls, seen through
torch's global module hooks). Peaks come from ``VmHWM``, reset through ``/proc/self/clear_refs``
at each call's start and end (Linux >= 4.0); where it cannot be reset, ``activations`` is 0 and
``outside`` the peak.

    SCALE_MEMORY_FILE=m.json python bench/peak.py restore --method direction ...
"""

from __future__ import annotations

import atexit
import json
import os
import runpy
import sys

import torch


def _status_kib(key: str) -> int:
    """One ``/proc/self/status`` field (``VmRSS``, ``VmHWM``) in bytes."""
    with open("/proc/self/status") as f:
        return next((int(line.split()[1]) * 1024 for line in f if line.startswith(key + ":")), 0)


class PeakTracker:
    """Splits the process's peak RSS into forward-call rises and the rest (see the module doc)."""

    def __init__(self) -> None:
        self.depth = self.start = self.activations = self.peak = self.outside = 0
        self.resettable = self._reset()

    def _reset(self) -> bool:
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # VmHWM := VmRSS
            return True
        except OSError:
            return False

    def _since_reset(self) -> int:
        """The peak since the last reset, folded into the overall peak."""
        hwm = _status_kib("VmHWM")
        self.peak = max(self.peak, hwm)
        return hwm

    def before_forward(self, module, args) -> None:
        if self.depth == 0 and self.resettable:
            self.outside = max(self.outside, self._since_reset())
            self.start = _status_kib("VmRSS")
            self.outside = max(self.outside, self.start)
            self._reset()
        self.depth += 1

    def after_forward(self, module, args, output) -> None:
        self.depth -= 1
        if self.depth == 0 and self.resettable:
            self.activations = max(self.activations, self._since_reset() - self.start)
            self._reset()

    def report(self) -> dict:
        last = self._since_reset()
        outside = max(self.outside, last) if self.resettable else self.peak
        cuda = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None
        return {"peak": self.peak, "outside": outside, "activations": self.activations, "cuda": cuda}


def main() -> None:
    tracker = PeakTracker()
    torch.nn.modules.module.register_module_forward_pre_hook(tracker.before_forward)
    torch.nn.modules.module.register_module_forward_hook(tracker.after_forward, always_call=True)

    def write() -> None:
        with open(os.environ["SCALE_MEMORY_FILE"], "w") as f:
            json.dump(tracker.report(), f)

    atexit.register(write)
    sys.argv = ["core", *sys.argv[1:]]
    runpy.run_module("core", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
