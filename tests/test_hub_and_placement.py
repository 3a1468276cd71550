"""Hub ids for both models with their resolved commit in the fingerprint (a fake HF cache, offline),
and accelerate placements (``--device-map auto``, ``--max-memory``) with the one-line refusal of
commands that edit offloaded weights."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from core.base.errors import InputError
from core.cli import main
from core.world.hub import hub_identity
from core.world.model_pair import resolve_pair
from core.world.models import ModelSpec, fingerprint, load_model, load_tokenizer, planned_offload
from core.world.placement import model_offloaded, parse_max_memory, refuse_offloaded, weight_bytes

HASH_A, HASH_B = "a" * 40, "b" * 40


def _hub_repo(cache: Path, repo: str, source: Path, commits: tuple[str, ...], ref: str) -> Path:
    """``models--org--name/snapshots/<commit>/`` copies of ``source`` and ``refs/main`` -> ``ref``."""
    root = cache / ("models--" + repo.replace("/", "--"))
    for commit in commits:
        shutil.copytree(source, root / "snapshots" / commit, dirs_exist_ok=True)
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / "main").write_text(ref)
    return root


@pytest.fixture()
def hub_cache(tmp_path, monkeypatch, tiny_model_dir, tiny_adapter_dir) -> Path:
    cache = tmp_path / "hub"
    _hub_repo(cache, "org/tiny", tiny_model_dir, (HASH_A, HASH_B), HASH_A)
    _hub_repo(cache, "org/tiny-lora", tiny_adapter_dir, (HASH_A, HASH_B), HASH_A)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def test_hub_base_fingerprint_follows_the_resolved_commit(hub_cache):
    at_main = fingerprint(ModelSpec("org/tiny", device="cpu"))
    assert at_main == fingerprint(ModelSpec("org/tiny", device="cpu", revision=HASH_A))
    (hub_cache / "models--org--tiny" / "refs" / "main").write_text(HASH_B)  # the repository moved on
    assert fingerprint(ModelSpec("org/tiny", device="cpu")) != at_main
    assert fingerprint(ModelSpec("org/tiny", device="cpu", revision=HASH_A)) == at_main


def test_hub_finetuned_adapter_loads_and_is_fingerprinted_by_commit(hub_cache, tiny_model_dir):
    pair = resolve_pair("org/tiny", "org/tiny-lora", device="cpu")
    ft = pair["finetuned"]
    assert hub_identity(ft.finetuned) == f"hub:org/tiny-lora@{HASH_A}"
    model = load_model(ft)
    assert any("lora_A" in n for n, _ in model.named_parameters())
    assert load_tokenizer(ft).chat_template
    before = fingerprint(ft)
    (hub_cache / "models--org--tiny-lora" / "refs" / "main").write_text(HASH_B)
    moved = resolve_pair("org/tiny", "org/tiny-lora", device="cpu")["finetuned"]
    assert fingerprint(moved) != before
    pinned = resolve_pair("org/tiny", "org/tiny-lora", device="cpu", finetuned_revision=HASH_A)["finetuned"]
    assert fingerprint(pinned) == before
    # a spec that keeps the hub id (not resolved by resolve_pair) loads the same adapter
    direct = ModelSpec("org/tiny", "org/tiny-lora", device="cpu", finetuned_revision=HASH_A)
    assert fingerprint(direct) == before


def test_unknown_hub_revision_and_missing_path_are_one_line(hub_cache, tmp_path):
    with pytest.raises(InputError) as err:
        fingerprint(ModelSpec("org/tiny", device="cpu", revision="no-such-branch"))
    assert "org/tiny" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(InputError, match="does not exist"):  # a path is never tried as a hub id
        load_model(ModelSpec("org/tiny", str(tmp_path / "no" / "adapter"), device="cpu"))


def test_max_memory_parsing():
    assert parse_max_memory("0=20GiB, cpu=60GiB") == {0: "20GiB", "cpu": "60GiB"}
    assert parse_max_memory(None) is None
    for bad in ("lots", "gpu=1GiB", "cpu=much"):
        with pytest.raises(InputError, match="--max-memory"):
            parse_max_memory(bad)


def test_bad_placement_options_exit_2(tiny_model_dir, capsys):
    for extra in (["--max-memory", "cpu=1GiB"], ["--device-map", "auto", "--max-memory", "x"]):
        assert main(["evaluate", "--base", str(tiny_model_dir), *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and "--max-memory" in err and "Fix:" in err


def test_device_map_auto_reaches_from_pretrained_and_matches(tiny_model_dir, tiny_adapter_dir, monkeypatch):
    import core.world.models as models

    seen: list[dict] = []
    real = models.AutoModelForCausalLM.from_pretrained

    def spy(*args, **kwargs):
        seen.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(models.AutoModelForCausalLM, "from_pretrained", spy)
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    whole = load_model(ModelSpec(str(tiny_model_dir), str(tiny_adapter_dir), device="cpu"))
    spec = ModelSpec(str(tiny_model_dir), str(tiny_adapter_dir), device="cpu", device_map="auto", max_memory="cpu=1GiB")
    placed = load_model(spec)
    assert (
        "device_map" not in seen[0]
        and seen[1]["device_map"] == "auto"
        and seen[1]["max_memory"]["cpu"] in ("1GiB", 2**30)
    )
    assert not model_offloaded(placed) and not planned_offload(spec)  # it fits: one device, every command runs
    with torch.no_grad():
        torch.testing.assert_close(placed(ids).logits, whole(ids).logits)
    assert weight_bytes(tiny_model_dir, torch.float32) == sum(
        p.numel() * 4 for p in load_model(ModelSpec(str(tiny_model_dir), device="cpu")).parameters()
    )


def test_disk_offload_runs_forward_and_weight_editing_commands_refuse(tiny_model_dir, tiny_adapter_dir, capsys):
    spec = ModelSpec(str(tiny_model_dir), device="cpu", device_map="auto", max_memory="cpu=1KB")
    assert planned_offload(spec), "a 1 KB limit offloads to disk"
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    whole = load_model(ModelSpec(str(tiny_model_dir), device="cpu"))
    placed = load_model(spec)
    assert model_offloaded(placed)
    with torch.no_grad():
        torch.testing.assert_close(placed(ids).logits, whole(ids).logits)
    with pytest.raises(InputError, match="peft cannot load"):
        load_model(
            ModelSpec(str(tiny_model_dir), str(tiny_adapter_dir), device="cpu", device_map="auto", max_memory="cpu=1KB")
        )
    with pytest.raises(InputError, match="perturbs the weights"):
        refuse_offloaded("landscape", planned_offload(spec))
    refuse_offloaded("evaluate", planned_offload(spec))  # forward-only: allowed
    argv = ["landscape", "--base", str(tiny_model_dir), "--finetuned", str(tiny_adapter_dir)]
    capsys.readouterr()  # the loads above printed their progress bars
    assert main([*argv, "--device-map", "auto", "--max-memory", "cpu=1KB"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "offloaded" in err and "Fix:" in err, err
