"""bench/scale.py covers every analysis and method, and its tiny size runs (one command of it: the
whole tiny run takes ~10 minutes on one core; one command ~45 s)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import core.service.commands  # noqa: F401  (registers every analysis and method)
from core.geometry.registry import ANALYSES
from core.restoration.registry import METHODS

BENCH = Path(__file__).resolve().parent.parent / "bench" / "scale.py"
sys.path.insert(0, str(BENCH.parent.parent))

from bench import scale  # noqa: E402


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
    assert "RSS/weights" in done.stdout
