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
from bench.peak import PeakTracker  # noqa: E402

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
    tracker = PeakTracker()
    if not tracker.resettable:
        pytest.skip("/proc/self/clear_refs is not writable here")
    pre = torch.nn.modules.module.register_module_forward_pre_hook(tracker.before_forward)
    post = torch.nn.modules.module.register_module_forward_hook(tracker.after_forward, always_call=True)
    try:
        start = tracker.report()["outside"]
        held = torch.ones(100 * MIB // 4)
        _Allocates(200)(torch.zeros(1))
        report = tracker.report()
    finally:
        pre.remove()
        post.remove()
    assert 180 * MIB < report["activations"] < 260 * MIB, report
    assert 90 * MIB < report["outside"] - start < 160 * MIB, report
    assert report["peak"] >= report["outside"] + 150 * MIB, report
    del held
