"""Model layer: device/dtype, loading, fingerprints, and one-line InputErrors for bad model input."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from peft import PeftModel

from core.base.errors import InputError
from core.world.models import (
    ModelSpec,
    fingerprint,
    load_model,
    load_tokenizer,
    resolve_base,
    resolve_device,
    resolve_dtype,
)


def strip_chat_template(model_dir) -> None:
    """Remove every trace of a chat template from a saved tokenizer directory."""
    for name in ("chat_template.jinja", "chat_template.json"):
        (model_dir / name).unlink(missing_ok=True)
    cfg_path = model_dir / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.pop("chat_template", None)
    cfg_path.write_text(json.dumps(cfg))


def assert_one_line_input_error(excinfo, *fragments: str) -> None:
    msg = str(excinfo.value)
    assert "\n" not in msg, msg
    assert "Fix:" in msg, msg
    for frag in fragments:
        assert frag in msg, (frag, msg)


# --- device and dtype ---------------------------------------------------------------------------


def test_resolve_device_named():
    assert resolve_device("cpu") == torch.device("cpu")
    if torch.cuda.device_count() > 1:
        assert resolve_device("cuda:1") == torch.device("cuda", 1)
    else:  # a device this machine lacks is a one-line input error, not a crash later
        with pytest.raises(InputError, match="cuda:1"):
            resolve_device("cuda:1")


def test_resolve_dtype_auto_cpu_is_float32():
    assert resolve_dtype("auto", torch.device("cpu")) is torch.float32


def test_resolve_dtype_auto_gpu_is_bfloat16():
    assert resolve_dtype("auto", torch.device("cuda")) is torch.bfloat16


@pytest.mark.parametrize(
    "name, expected",
    [
        ("float32", torch.float32),
        ("fp32", torch.float32),
        ("bfloat16", torch.bfloat16),
        ("bf16", torch.bfloat16),
        ("float16", torch.float16),
        ("fp16", torch.float16),
    ],
)
def test_resolve_dtype_named(name, expected):
    assert resolve_dtype(name, torch.device("cpu")) is expected


def test_resolve_dtype_unknown_is_input_error():
    with pytest.raises(InputError) as excinfo:
        resolve_dtype("float8", torch.device("cpu"))
    assert_one_line_input_error(excinfo, "float8")


# --- loading ------------------------------------------------------------------------------------


def test_load_model_eval_mode_on_cpu(tiny_model_dir):
    model = load_model(ModelSpec(str(tiny_model_dir), device="cpu"))
    assert not model.training
    assert all(not m.training for m in model.modules())
    params = list(model.parameters())
    assert {p.device.type for p in params} == {"cpu"}
    assert {p.dtype for p in params} == {torch.float32}
    assert model.config.hidden_size == 32


def test_load_model_dtype_override(tiny_model_dir):
    model = load_model(ModelSpec(str(tiny_model_dir), device="cpu", dtype="bfloat16"))
    assert next(model.parameters()).dtype is torch.bfloat16


def test_load_tokenizer_left_padded_with_template(tiny_model_dir):
    tok = load_tokenizer(ModelSpec(str(tiny_model_dir)))
    assert tok.padding_side == "left"
    assert tok.pad_token is not None
    assert tok.chat_template


def test_load_tokenizer_without_chat_template(tmp_path, tiny_model_dir):
    bare = tmp_path / "no-template"
    shutil.copytree(tiny_model_dir, bare)
    strip_chat_template(bare)
    with pytest.raises(InputError) as excinfo:
        load_tokenizer(ModelSpec(str(bare)))
    assert_one_line_input_error(excinfo, "chat template")


# --- fingerprints -------------------------------------------------------------------------------


def test_fingerprint_stable_and_path_independent(tmp_path, tiny_model_dir):
    spec = ModelSpec(str(tiny_model_dir))
    fp = fingerprint(spec)
    assert fp == fingerprint(spec)
    assert isinstance(fp, str) and len(fp) == 16
    moved = tmp_path / "elsewhere"
    shutil.copytree(tiny_model_dir, moved)
    assert fingerprint(ModelSpec(str(moved))) == fp  # weights, not paths


def test_fingerprint_changes_with_weights(tmp_path, tiny_model_dir, tokenizer):
    changed = tmp_path / "changed"
    shutil.copytree(tiny_model_dir, changed)
    before = fingerprint(ModelSpec(str(changed)))
    model = load_model(ModelSpec(str(changed), device="cpu"))
    with torch.no_grad():
        model.model.layers[0].mlp.down_proj.weight[0, 0] += 1.0
    model.save_pretrained(changed)
    after = fingerprint(ModelSpec(str(changed)))
    assert after != before
    assert after == fingerprint(ModelSpec(str(changed)))
    assert before == fingerprint(ModelSpec(str(tiny_model_dir)))


def test_fingerprint_includes_adapter(tiny_model_dir, tiny_adapter_dir):
    base = fingerprint(ModelSpec(str(tiny_model_dir)))
    tuned = fingerprint(ModelSpec(str(tiny_model_dir), str(tiny_adapter_dir)))
    assert base != tuned
    assert tuned == fingerprint(ModelSpec(str(tiny_model_dir), str(tiny_adapter_dir)))


# --- bad base input -----------------------------------------------------------------------------


def test_missing_base_path(tmp_path):
    missing = tmp_path / "does-not-exist"
    for call in (load_model, load_tokenizer, fingerprint):
        with pytest.raises(InputError) as excinfo:
            call(ModelSpec(str(missing), device="cpu"))
        assert_one_line_input_error(excinfo, "does not exist")


def test_directory_without_config(tmp_path):
    empty = tmp_path / "empty-model"
    empty.mkdir()
    (empty / "README.md").write_text("not a model")
    with pytest.raises(InputError) as excinfo:
        load_model(ModelSpec(str(empty), device="cpu"))
    assert_one_line_input_error(excinfo, "config.json")


def test_adapter_passed_as_base(tiny_adapter_dir):
    with pytest.raises(InputError) as excinfo:
        load_model(ModelSpec(str(tiny_adapter_dir), device="cpu"))
    assert_one_line_input_error(excinfo, "adapter")


def test_missing_gguf(tmp_path):
    with pytest.raises(InputError) as excinfo:
        resolve_base(str(tmp_path / "model.gguf"))
    assert_one_line_input_error(excinfo, "GGUF")
    with pytest.raises(InputError):
        load_model(ModelSpec(str(tmp_path / "model.gguf"), device="cpu"))


def test_unavailable_hub_id_is_input_error_for_model_and_tokenizer():
    # A name shaped like a hub id that is neither a local path nor cached (tests run offline).
    # The CLI loads the tokenizer first, so both loaders must turn this into an InputError.
    spec = ModelSpec("no-such-org/no-such-model-xyz", device="cpu")
    with pytest.raises(InputError) as excinfo:
        load_model(spec)
    assert_one_line_input_error(excinfo, "no-such-org/no-such-model-xyz")
    with pytest.raises(InputError) as excinfo:
        load_tokenizer(spec)
    assert_one_line_input_error(excinfo, "no-such-org/no-such-model-xyz")


# --- fine-tuned models --------------------------------------------------------------------------


def test_adapter_on_matching_base(tiny_model_dir, tiny_adapter_dir, tokenizer):
    model = load_model(ModelSpec(str(tiny_model_dir), str(tiny_adapter_dir), device="cpu"))
    assert isinstance(model, PeftModel)
    assert not model.training
    base = load_model(ModelSpec(str(tiny_model_dir), device="cpu"))
    ids = tokenizer("hello there", return_tensors="pt").input_ids
    with torch.no_grad():
        assert not torch.allclose(model(input_ids=ids).logits, base(input_ids=ids).logits)


def test_adapter_merge(tiny_model_dir, tiny_adapter_dir, tokenizer):
    spec = ModelSpec(str(tiny_model_dir), str(tiny_adapter_dir), device="cpu")
    unmerged = load_model(spec)
    merged = load_model(spec, merge=True)
    assert not isinstance(merged, PeftModel)
    ids = tokenizer("hello there", return_tensors="pt").input_ids
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=ids).logits, unmerged(input_ids=ids).logits, atol=1e-4, rtol=1e-4)


def test_adapter_on_mismatched_base(tiny_other_dir, tiny_adapter_dir):
    with pytest.raises(InputError) as excinfo:
        load_model(ModelSpec(str(tiny_other_dir), str(tiny_adapter_dir), device="cpu"))
    assert_one_line_input_error(excinfo, "does not fit")


def test_adapter_without_safetensors(tmp_path, tiny_model_dir, tiny_adapter_dir):
    broken = tmp_path / "adapter"
    shutil.copytree(tiny_adapter_dir, broken)
    (broken / "adapter_model.safetensors").unlink()
    with pytest.raises(InputError) as excinfo:
        load_model(ModelSpec(str(tiny_model_dir), str(broken), device="cpu"))
    assert_one_line_input_error(excinfo, "adapter_model.safetensors")


def test_missing_finetuned_path(tmp_path, tiny_model_dir):
    with pytest.raises(InputError) as excinfo:
        load_model(ModelSpec(str(tiny_model_dir), str(tmp_path / "nope"), device="cpu"))
    assert_one_line_input_error(excinfo, "does not exist")


def test_full_checkpoint_with_other_architecture(tiny_model_dir, tiny_other_dir):
    with pytest.raises(InputError) as excinfo:
        load_model(ModelSpec(str(tiny_model_dir), str(tiny_other_dir), device="cpu"))
    assert_one_line_input_error(excinfo, "does not match")


def test_full_checkpoint_same_architecture_loads_its_own_weights(tmp_path, tiny_model_dir):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_model_dir, ckpt)
    model = load_model(ModelSpec(str(ckpt), device="cpu"))
    with torch.no_grad():
        model.model.layers[1].self_attn.o_proj.weight.mul_(2.0)
    model.save_pretrained(ckpt)
    loaded = load_model(ModelSpec(str(tiny_model_dir), str(ckpt), device="cpu"))
    assert not isinstance(loaded, PeftModel)
    torch.testing.assert_close(
        loaded.model.layers[1].self_attn.o_proj.weight, model.model.layers[1].self_attn.o_proj.weight
    )
    assert fingerprint(ModelSpec(str(tiny_model_dir), str(ckpt))) != fingerprint(ModelSpec(str(tiny_model_dir)))


def test_model_directory_without_tokenizer_is_input_error(tmp_path, tiny_model_dir):
    # A model saved with model.save_pretrained only (no tokenizer files): the CLI loads the
    # tokenizer first, so this user mistake must be a one-line InputError, not a traceback.
    no_tok = tmp_path / "no-tokenizer"
    no_tok.mkdir()
    for name in ("config.json", "generation_config.json", "model.safetensors"):
        if (tiny_model_dir / name).exists():
            shutil.copy(tiny_model_dir / name, no_tok / name)
    load_model(ModelSpec(str(no_tok), device="cpu"))  # the weights themselves are fine
    with pytest.raises(InputError) as excinfo:
        load_tokenizer(ModelSpec(str(no_tok)))
    assert_one_line_input_error(excinfo, str(no_tok))


def test_fingerprint_changes_with_chat_template(tmp_path, tiny_model_dir):
    # Generations (and so cached evaluations) depend on the chat template, which transformers
    # saves as chat_template.jinja: a model whose template changed is not the same model.
    edited = tmp_path / "edited-template"
    shutil.copytree(tiny_model_dir, edited)
    template = edited / "chat_template.jinja"
    assert template.exists()
    before = fingerprint(ModelSpec(str(edited)))
    template.write_text(
        "{% for m in messages %}<<{{ m['content'] }}>>{% endfor %}{% if add_generation_prompt %}ANSWER:{% endif %}"
    )
    assert (
        load_tokenizer(ModelSpec(str(edited))).apply_chat_template(
            [{"role": "user", "content": "x"}], tokenize=False, add_generation_prompt=True
        )
        == "<<x>>ANSWER:"
    )
    assert fingerprint(ModelSpec(str(edited))) != before
