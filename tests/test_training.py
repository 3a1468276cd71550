"""LoRA SFT on the tiny model: loss goes down, only LoRA weights train, bad input is an InputError."""

from __future__ import annotations

import threading

import pytest
import torch
from peft import PeftModel

from core.base.errors import Cancelled, InputError
from core.base.progress import Progress
from core.world.data import Example
from core.world.models import ModelSpec, load_model
from core.world.training import SFTConfig, lora_sft

EXAMPLES = [
    Example("Convert: 5th of March, 2021", "2021-03-05"),
    Example("Convert: 1 Jan 2000", "2000-01-01"),
    Example("Convert: December 31, 1999", "1999-12-31"),
    Example("Convert: 7/4/1976", "1976-07-04"),
    Example("Say hello", "Hello!"),
]
CONFIG = SFTConfig(steps=20, batch_size=4, lr=1e-2, rank=4, alpha=8, max_length=64, seed=0)


def test_lora_sft_lowers_the_loss(tiny_model, tokenizer):
    frozen = {n: p.detach().clone() for n, p in tiny_model.named_parameters()}
    events = []
    result = lora_sft(tiny_model, tokenizer, EXAMPLES, CONFIG, Progress(events.append))
    assert len(result.losses) == 20
    assert all(torch.isfinite(torch.tensor(result.losses)))
    assert result.losses[-1] < result.losses[0]
    assert sum(result.losses[-5:]) / 5 < 0.9 * sum(result.losses[:5]) / 5
    model = result.model
    assert isinstance(model, PeftModel)
    assert not model.training
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_A" in n or "lora_B" in n for n in trainable)
    assert all(("q_proj" in n or "v_proj" in n) for n in trainable)
    assert len(trainable) == 2 * 2 * 2  # 2 layers x (q_proj, v_proj) x (A, B)
    # the base weights did not move
    for name, p in model.get_base_model().named_parameters():
        if "lora_" not in name:
            key = name.replace(".base_layer", "")
            torch.testing.assert_close(p, frozen[key], rtol=0, atol=0)
    # progress: one event per step, reaching 1.0, with the loss as the partial result
    assert len(events) == 20 and events[-1].fraction == 1.0
    assert [e.partial["step"] for e in events] == list(range(1, 21))
    assert [e.partial["loss"] for e in events] == result.losses


def test_lora_sft_is_seeded(tiny_model_dir, tokenizer):
    config = SFTConfig(steps=3, batch_size=2, lr=1e-2, rank=2, alpha=4, max_length=64, seed=3)
    a = lora_sft(load_model(ModelSpec(str(tiny_model_dir), device="cpu")), tokenizer, EXAMPLES, config).losses
    b = lora_sft(load_model(ModelSpec(str(tiny_model_dir), device="cpu")), tokenizer, EXAMPLES, config).losses
    assert a == b


def test_lora_sft_empty_examples_is_input_error(tiny_model, tokenizer):
    with pytest.raises(InputError) as excinfo:
        lora_sft(tiny_model, tokenizer, [], CONFIG)
    assert "\n" not in str(excinfo.value) and "Fix:" in str(excinfo.value)


def test_lora_sft_cancel(tiny_model, tokenizer):
    cancel = threading.Event()
    seen = []

    def on_event(event):
        seen.append(event)
        if event.partial["step"] == 2:
            cancel.set()

    with pytest.raises(Cancelled):
        lora_sft(tiny_model, tokenizer, EXAMPLES, CONFIG, Progress(on_event, cancel))
    assert len(seen) == 2


def test_lora_sft_divergence_is_input_error(tiny_model, tokenizer, monkeypatch):
    import core.world.training as training

    def nan_loss(model, batch):
        return torch.full((batch["input_ids"].shape[0],), float("nan"), requires_grad=True)

    monkeypatch.setattr(training, "per_example_loss", nan_loss)
    with pytest.raises(InputError) as excinfo:
        lora_sft(tiny_model, tokenizer, EXAMPLES, SFTConfig(steps=5, batch_size=4, max_length=64))
    assert "diverged at step 1" in str(excinfo.value) and "Fix:" in str(excinfo.value)
