"""bench/scale.py covers every analysis and method, and its tiny size runs (one command of it: the
whole tiny run takes ~10 minutes on one core; one command ~45 s)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import core.service.commands  # noqa: F401  (registers every analysis and method)
from core.geometry.registry import ANALYSES
from core.restoration.registry import METHODS

BENCH = Path(__file__).resolve().parent.parent / "bench" / "scale.py"
sys.path.insert(0, str(BENCH.parent.parent))

from bench import scale  # noqa: E402
from bench.peak import ForwardCalls, PeakTracker, RssMeter  # noqa: E402

MIB = 2**20


def test_the_bench_runs_every_analysis_and_method():
    assert set(scale.TINY) == set(ANALYSES)
    assert set(scale.METHODS) == set(METHODS)


def test_tiny_size_runs_a_command_and_prints_its_row(raw_model_dir, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    argv = ["--size", "tiny", "--threads", "1", "--only", "correlate", "--tokenizer", raw_model_dir]
    done = subprocess.run(
        [sys.executable, str(BENCH), *argv, "--keep", str(tmp_path / "scale")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr[-2000:]
    row = next(line for line in done.stdout.splitlines() if line.startswith("correlate"))
    assert row.rstrip().endswith("pass"), done.stdout
    assert "over base" in done.stdout and "one batch MiB" in done.stdout


class _Allocates(torch.nn.Module):
    """A forward that allocates (and frees) ``mib`` MiB: planted activations."""

    def __init__(self, mib: int):
        super().__init__()
        self.n = mib * MIB // 4

    def forward(self, x):
        return x + torch.ones(self.n).sum()


def test_peak_tracker_separates_one_forward_from_memory_held_outside():
    """200 MiB allocated inside a forward count as one batch's activations, not toward the peak
    outside forward calls; 100 MiB held outside count there."""
    tracker = PeakTracker(RssMeter())
    if not tracker.meter.resettable:
        pytest.skip("/proc/self/clear_refs is not writable here")
    calls = ForwardCalls([tracker])
    try:
        start = tracker.report()["outside"]
        held = torch.ones(100 * MIB // 4)
        _Allocates(200)(torch.zeros(1))
        report = tracker.report()
    finally:
        calls.remove()
    assert 180 * MIB < report["activations"] < 260 * MIB, report
    assert 90 * MIB < report["outside"] - start < 160 * MIB, report
    assert report["peak"] >= report["outside"] + 150 * MIB, report
    del held


class _Planted:
    """A meter whose memory the test sets: the CUDA meter's contract without a GPU."""

    resettable = True

    def __init__(self):
        self.now = self.top = self.file = 0

    def current(self):
        return self.now

    def mapped(self):
        return self.file

    def peak(self):
        return self.top

    def reset(self):
        self.top = self.now
        return True

    def set(self, value):
        self.now, self.top = value, max(self.top, value)


def test_peak_tracker_on_planted_memory():
    """Outside 10 -> 50 held; a forward rises 50 -> 80 and falls back; a second, nested call rises
    40 -> 60; then 70 outside: activations 30 (the larger rise), outside 70, peak 80."""
    meter = _Planted()
    tracker = PeakTracker(meter)
    calls = ForwardCalls([tracker])
    try:

        class Step(torch.nn.Module):
            def __init__(self, low, high, inner=None):
                super().__init__()
                self.low, self.high, self.inner = low, high, inner

            def forward(self, x):
                meter.set(self.high)
                if self.inner is not None:
                    self.inner(x)
                meter.set(self.low)
                return x

        meter.set(10)
        meter.set(50)
        Step(50, 80)(torch.zeros(1))
        meter.set(40)
        Step(40, 60, inner=Step(60, 60))(torch.zeros(1))  # the inner call is not a forward of its own
        meter.set(70)
    finally:
        calls.remove()
    assert tracker.report() == {"peak": 80, "outside": 70, "activations": 30}


def test_weights_paged_in_by_a_forward_are_not_its_activations():
    """A first forward that faults in 100 of mmapped weights (which stay) and allocates 30 of
    activations (which go): activations 30, and the weights count outside afterwards."""
    meter = _Planted()
    tracker = PeakTracker(meter)

    class FirstRead(torch.nn.Module):
        def forward(self, x):
            meter.file += 100
            meter.set(meter.now + 100 + 30)
            meter.set(meter.now - 30)
            return x

    calls = ForwardCalls([tracker])
    try:
        meter.set(10)
        FirstRead()(torch.zeros(1))
    finally:
        calls.remove()
    assert tracker.report() == {"peak": 140, "outside": 110, "activations": 30}
