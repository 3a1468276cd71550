"""Shared fixtures: the real SmolLM2 tokenizer, tiny random Llama models, a LoRA adapter, and a
per-session cache directory so unit tests never write into the project cache.

Tests marked ``integration`` opt out of the cache redirect and see the real project cache.
"""

from __future__ import annotations

import os

# No test may reach the network: with this set before transformers/huggingface_hub are imported,
# a hub id that is not cached fails at once instead of retrying for a minute and a half.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# The cache root the tests were started with (None: the project's cache/), before any redirect.
_ORIGINAL_CACHE_DIR = os.environ.get("SAFETY_CACHE_DIR")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from core.world.models import ModelSpec, load_tokenizer  # noqa: E402

TINY_HIDDEN = 32
OTHER_HIDDEN = 48


@pytest.fixture(scope="session")
def raw_model_dir() -> str:
    """The dequantized SmolLM2 directory in the *project* cache (resolved before any redirect)."""
    from core.world.demo import raw_model_path

    saved = os.environ.get("SAFETY_CACHE_DIR")
    _set_env("SAFETY_CACHE_DIR", _ORIGINAL_CACHE_DIR)
    try:
        return raw_model_path()
    finally:
        _set_env("SAFETY_CACHE_DIR", saved)


def _set_env(name: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value


@pytest.fixture(scope="session")
def tokenizer(raw_model_dir):
    """The real SmolLM2 tokenizer (chat template, left padding) loaded through core.world.models."""
    return load_tokenizer(ModelSpec(raw_model_dir))


@pytest.fixture(scope="session")
def session_cache_dir(tmp_path_factory, tokenizer) -> Path:
    # Depends on ``tokenizer`` so the project paths are resolved before the redirect exists.
    return tmp_path_factory.mktemp("safety-cache")


@pytest.fixture(autouse=True)
def _redirect_cache(request, monkeypatch):
    """Point core.base.paths.cache_dir() at a per-session tmp dir, unless the test is ``integration``.

    Unit tests also run torch on one thread: their models are tiny, and with a second busy
    process on a small machine, multi-threaded kernels spin-wait and run ~100x slower.
    """
    if request.node.get_closest_marker("integration") is not None:
        yield
        return
    cache = request.getfixturevalue("session_cache_dir")
    monkeypatch.setenv("SAFETY_CACHE_DIR", str(cache))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _save_tiny(path: Path, tokenizer, hidden: int, seed: int = 0) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer) or 49152,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
        # With the default 0.02 the tied embeddings dominate and greedy decoding only repeats the
        # last prompt token ("\n" after the assistant header): every output strips to "". At 0.2
        # outputs depend on the whole prompt, so order and padding mistakes change them.
        initializer_range=0.2,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tokenizer) -> Path:
    """A 2-layer, hidden-32 random Llama with the SmolLM2 tokenizer, saved with save_pretrained."""
    return _save_tiny(tmp_path_factory.mktemp("tiny") / "model", tokenizer, TINY_HIDDEN)


@pytest.fixture(scope="session")
def tiny_other_dir(tmp_path_factory, tokenizer) -> Path:
    """Same as ``tiny_model_dir`` but hidden size 48 (for mismatch tests)."""
    return _save_tiny(tmp_path_factory.mktemp("tiny-other") / "model", tokenizer, OTHER_HIDDEN)


@pytest.fixture(scope="session")
def tiny_adapter_dir(tmp_path_factory, tiny_model_dir) -> Path:
    """A LoRA adapter (r=2, q_proj/v_proj) on the tiny model, with non-zero B so it changes outputs."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    torch.manual_seed(1)
    peft_model = get_peft_model(
        base, LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    )
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    out = tmp_path_factory.mktemp("tiny-adapter") / "adapter"
    peft_model.save_pretrained(out)
    return out


@pytest.fixture()
def tiny_model(tiny_model_dir):
    """A freshly loaded tiny model (cpu, fp32, eval mode); tests may modify it."""
    from core.world.models import load_model

    return load_model(ModelSpec(str(tiny_model_dir), device="cpu"))
