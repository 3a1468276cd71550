"""The engine runs where the model lives: one host-transfer helper, no stray ``.numpy()``, and the
bf16 paths (a GPU's default dtype) exercised on the CPU."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from core.base.tensors import CHUNK, dot64, flat, to_host
from core.restoration.methods.curvature import LoraObjective
from core.world.models import ModelSpec, load_model

CORE = Path(__file__).resolve().parent.parent / "core"


def test_only_the_host_helper_calls_numpy_on_tensors():
    """``.numpy()`` raises for a CUDA tensor: every transfer goes through ``core.base.tensors.to_host``."""
    offenders = [
        f"{p.relative_to(CORE)}:{i}"
        for p in CORE.rglob("*.py")
        if p.name != "tensors.py"
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if re.search(r"\.numpy\(\)", line)
    ]
    assert offenders == [], offenders


def test_to_host_and_flat_keep_values_and_use_fp32():
    t = torch.arange(6, dtype=torch.bfloat16).reshape(2, 3)
    assert to_host(t).dtype.name == "float32" and to_host(t).tolist() == [[0, 1, 2], [3, 4, 5]]
    assert flat([t, t[:1]]).dtype == torch.float32 and flat([t, t[:1]]).numel() == 9


def test_lora_objective_in_bf16_round_trips_in_fp32(tiny_model_dir, tiny_adapter_dir, tokenizer):
    model = load_model(ModelSpec(str(tiny_model_dir), str(tiny_adapter_dir), device="cpu", dtype="bfloat16"))
    obj = LoraObjective(model, tokenizer, batch_size=2)
    assert next(p for n, p in model.named_parameters() if "q_proj.base_layer" in n).dtype == torch.bfloat16
    for p in obj.params:  # peft keeps adapters in fp32 beside a bf16 base; make them bf16 to test the cast
        p.data = p.data.to(torch.bfloat16)
    theta = obj.get()
    assert theta.dtype == torch.float32
    moved = theta + 0.5
    obj.set(moved)
    assert all(p.dtype == torch.bfloat16 for p in obj.params), "set() casts into the parameters' dtype"
    torch.testing.assert_close(obj.get(), moved.to(torch.bfloat16).float())
    obj.set(theta)
    torch.testing.assert_close(obj.get(), theta)


def test_dot64_over_chunks_equals_the_whole_float64_sum():
    """A tensor longer than one chunk (and not a multiple of it): the chunked float64 products sum to
    the whole tensor's float64 product, for bf16 and fp32 inputs alike."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(CHUNK + 12_345, generator=gen)
    y = torch.randn(CHUNK + 12_345, generator=gen).to(torch.bfloat16)
    assert dot64(x, y) == pytest.approx(float((x.double() * y.double()).sum()), rel=1e-12)
    assert dot64(x.view(-1, 1)) == pytest.approx(float(x.double().pow(2).sum()), rel=1e-12)
