"""Bad input, table-driven: every case exits with code 2, prints exactly one line
``error: ... Fix: ...`` naming the input, shows no traceback, writes nothing to the cache (no
file outside the results store, no results entry but file digests) and loads no model: each is
caught before any weights are read or the demo world is built."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
from pathlib import Path

import pytest

from core.base.paths import cache_dir
from core.cli import main

PAIR = ["--base", "{tiny}", "--finetuned", "{adapter}"]
BIG_PROMPTS_MB = 11  # above the prompts file cap


def _snapshot() -> tuple[set[str], set[str]]:
    """(files under the cache outside the results store, results keys that are not file digests)."""
    root = cache_dir()
    files = {str(p.relative_to(root)) for p in root.rglob("*") if "results" not in p.parts}
    db = root / "results" / "cache.db"
    keys: set[str] = set()
    if db.exists():
        with sqlite3.connect(db) as conn:
            keys = {k for (k,) in conn.execute("SELECT key FROM Cache") if not str(k).startswith("file-digest:")}
    return files, keys


@pytest.fixture(scope="module")
def paths(tmp_path_factory, tiny_model_dir, tiny_adapter_dir, tiny_other_dir) -> dict[str, str]:
    """Every broken input the cases name, made once."""
    root = tmp_path_factory.mktemp("bad-inputs")

    def copy(src: Path, name: str) -> Path:
        return Path(shutil.copytree(src, root / name))

    garbage = copy(tiny_model_dir, "garbage-config")
    (garbage / "config.json").write_text("{this is not json")
    no_type = copy(tiny_model_dir, "no-model-type")
    cfg = json.loads((no_type / "config.json").read_text())
    cfg.pop("model_type", None)
    (no_type / "config.json").write_text(json.dumps(cfg))
    cut_base = copy(tiny_model_dir, "cut-base")
    weights = cut_base / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    cut_adapter = copy(tiny_adapter_dir, "cut-adapter")
    aw = cut_adapter / "adapter_model.safetensors"
    aw.write_bytes(aw.read_bytes()[: aw.stat().st_size - 64])
    bare_adapter = copy(tiny_adapter_dir, "bare-adapter")
    (bare_adapter / "adapter_model.safetensors").unlink()
    bad_adapter_cfg = copy(tiny_adapter_dir, "bad-adapter-config")
    (bad_adapter_cfg / "adapter_config.json").write_text('{"r": 2, "target_mod')
    empty_dir = root / "empty-dir"
    empty_dir.mkdir()
    (root / "cut.gguf").write_bytes(b"GGUF\x03\x00\x00\x00" + os.urandom(40))
    (root / "random.gguf").write_bytes(os.urandom(4096))
    (root / "no-prompt.csv").write_text("text,label\nhello,1\n")
    (root / "empty.csv").write_text("")
    (root / "broken.jsonl").write_text('{"prompt": "a"}\n{"prompt": \n')
    (root / "list.jsonl").write_text('["prompt", "a"]\n')
    (root / "data.parquet").write_text("prompt\na\n")
    (root / "empty.txt").write_text("\n\n  \n")
    (root / "binary.txt").write_bytes(b"\xff\xfe\x00\x81" * 100)
    with open(root / "huge.txt", "w") as f:
        line = "How do I do something I should not do, in great detail please?\n"
        f.write(line * (BIG_PROMPTS_MB * 2**20 // len(line)))
    (root / "many.txt").write_text("a prompt\n" * 20_001)
    (root / "adapter_as_base").mkdir()
    shutil.copy(tiny_adapter_dir / "adapter_config.json", root / "adapter_as_base")
    return {
        "tiny": str(tiny_model_dir),
        "adapter": str(tiny_adapter_dir),
        "other": str(tiny_other_dir),
        "garbage": str(garbage),
        "no_type": str(no_type),
        "cut_base": str(cut_base),
        "cut_adapter": str(cut_adapter),
        "bare_adapter": str(bare_adapter),
        "bad_adapter_cfg": str(bad_adapter_cfg),
        "empty_dir": str(empty_dir),
        "root": str(root),
        "missing": str(root / "nope"),
    }


# (argv with {placeholders} from ``paths``, a word the one line must contain)
CASES = [
    # --- options: parsing, bounds, finiteness, choices
    (["correlate", "--n", "-5"], "--n"),
    (["correlate", "--n", "many"], "--n"),
    (["correlate", "--tokens", "some"], "--tokens"),
    (["correlate", "--null-seeds", "-1"], "--null-seeds"),
    (["landscape", "--grid", "100000"], "--grid"),
    (["landscape", "--grid", "1"], "--grid"),
    (["landscape", "--samples", "0"], "--samples"),
    (["landscape", "--directions", "sideways"], "--directions"),
    (["landscape", "--radius", "nan"], "--radius"),
    (["landscape", "--radius", "-1"], "--radius"),
    (["curvature", "--lanczos-tol", "nan"], "--lanczos-tol"),
    (["curvature", "--k", "0"], "--k"),
    (["curvature", "--samples", "-1"], "--samples"),
    (["curvature", "--lr", "inf"], "--lr"),
    (["curvature", "--alignment-loss", "mse"], "--alignment-loss"),
    (["basin", "--prompts", "0"], "--prompts"),
    (["basin", "--max-new-tokens", "-1"], "--max-new-tokens"),
    (["basin", "--radius", "inf"], "--radius"),
    (["basin", "--points", "100001"], "--points"),
    (["evaluate", "--dtype", "int8"], "--dtype"),
    (["evaluate", "--seed", "-1"], "--seed"),
    (["evaluate", "--harmful-examples", "-3"], "--harmful-examples"),
    (["evaluate", "--threads", "-2"], "--threads"),
    (["evaluate", "--capability-items", "-1"], "--capability-items"),
    (["restore", "--method", "curvature", "--retain-general", "65"], "--retain-general"),
    (["compare", "--retain-general", "-1"], "--retain-general"),
    (["restore", "--method", "direction", "--response-tokens", "0"], "--response-tokens"),
    (["compare", "--forget", "65"], "--forget"),
    (["evaluate", "--eval-examples", "101"], "--eval-examples"),
    (["restore", "--method", "resta", "--param", "unaligned={missing}"], "nope"),
    (["landscape", *PAIR, "--workers", "2", "--direction-memory", "regenerate"], "regenerate"),
    (["world", "--seed", "abc"], "--seed"),
    (["world", "--harmful-examples", "1e9"], "--harmful-examples"),
    (["trajectory", "--lrs", "fast,slow"], "--lrs"),
    (["trajectory", "--iterations", "0"], "--iterations"),
    (["trajectory", "--grid", "-3"], "--grid"),
    (["capability", "--tasks", "chess"], "chess"),
    (["capability", "--items=-1"], "--items"),
    (["capability", "--batch-size", "0"], "--batch-size"),
    (["correlate", "--no-such-option"], "--no-such-option"),
    (["no-such-command"], "no-such-command"),
    ([], "command"),
    # --- restoration parameters and method choices, checked before data or models
    (["restore"], "--method"),
    (["restore", "--method", "magic"], "magic"),
    (["restore", "--method", "curvature", "--param", "epsilon=-1"], "epsilon"),
    (["restore", "--method", "curvature", "--param", "iterations=-3"], "iterations"),
    (["restore", "--method", "curvature", "--param", "epsilon=abc"], "epsilon"),
    (["restore", "--method", "curvature", "--param", "epsilon"], "epsilon"),
    (["restore", "--method", "curvature", "--param", "colour=blue"], "colour"),
    (["compare", "--methods", "curvature,magic"], "magic"),
    # --- model paths: missing, not a model, damaged, mismatched (before any weights load)
    (["correlate", "--base", "{tiny}", "--finetuned", "{missing}"], "nope"),
    (["landscape", "--base", "{tiny}", "--finetuned", "{missing}"], "nope"),
    (["curvature", "--base", "{tiny}", "--finetuned", "{missing}"], "nope"),
    (["basin", "--base", "{tiny}", "--finetuned", "{missing}"], "nope"),
    (["evaluate", "--base", "{missing}"], "nope"),
    (["evaluate", "--base", "./no-such-folder/model"], "no-such-folder"),
    (["evaluate", "--base", "core/no-such-model"], "core/no-such-model"),
    (["evaluate", "--base", "/etc/passwd"], "/etc/passwd"),
    (["evaluate", "--base", "{empty_dir}"], "empty-dir"),
    (["evaluate", "--base", "{root}/adapter_as_base"], "adapter"),
    (["evaluate", "--finetuned", "{adapter}"], "--base"),
    (["correlate", "--base", "{tiny}"], "--finetuned"),
    (["evaluate", "--base", "{garbage}"], "config.json"),
    (["correlate", "--base", "{tiny}", "--finetuned", "{garbage}"], "config.json"),
    (["correlate", "--base", "{tiny}", "--finetuned", "{no_type}"], "model_type"),
    (["evaluate", "--base", "{cut_base}"], "model.safetensors"),
    (["correlate", "--base", "{tiny}", "--finetuned", "{cut_adapter}"], "adapter_model.safetensors"),
    (["correlate", "--base", "{tiny}", "--finetuned", "{bare_adapter}"], "adapter_model.safetensors"),
    (["correlate", "--base", "{tiny}", "--finetuned", "{bad_adapter_cfg}"], "adapter_config.json"),
    (["landscape", "--base", "{other}", "--finetuned", "{adapter}"], "does not fit"),
    (["evaluate", "--base", "{root}/cut.gguf"], "cut.gguf"),
    (["evaluate", "--base", "{root}/random.gguf"], "random.gguf"),
    (["evaluate", "--base", "{root}/missing.gguf"], "missing.gguf"),
    # --- prompt and dataset files
    (["evaluate", "--prompts-file", "{missing}.txt"], "nope.txt"),
    (["evaluate", "--prompts-file", "{root}"], "bad-inputs"),
    (["evaluate", "--prompts-file", "{root}/empty.txt"], "empty.txt"),
    (["evaluate", "--prompts-file", "{root}/binary.txt"], "binary.txt"),
    (["evaluate", "--prompts-file", "{root}/huge.txt"], "huge.txt"),
    (["evaluate", "--prompts-file", "{root}/many.txt"], "many.txt"),
    (["restore", "--method", "interpolate", "--prompts-file", "{root}/huge.txt"], "huge.txt"),
    (["compare", "--prompts-file", "{root}/binary.txt"], "binary.txt"),
    (["correlate", *PAIR, "--harmful-file", "{root}/no-prompt.csv"], "no-prompt.csv"),
    (["correlate", *PAIR, "--task-file", "{root}/empty.csv"], "empty.csv"),
    (["landscape", *PAIR, "--benign-file", "{root}/broken.jsonl"], "broken.jsonl"),
    (["landscape", *PAIR, "--harmful-file", "{root}/list.jsonl"], "list.jsonl"),
    (["correlate", *PAIR, "--general-file", "{root}/data.parquet"], "data.parquet"),
    (["correlate", *PAIR, "--harmful-file", "{missing}.csv"], "nope.csv"),
    # --- judges
    (["evaluate", "--judge", "notaspec"], "notaspec"),
    (["evaluate", "--judge", "no_such_module_xyz:judge"], "no_such_module_xyz"),
    (["evaluate", "--judge", "json:no_such_function"], "no_such_function"),
    (["evaluate", "--judge", "math:pi"], "math:pi"),
    (["evaluate", "--judge", "math:sqrt"], "math:sqrt"),
    (["basin", "--judge", "no_such_module_xyz:judge"], "no_such_module_xyz"),
    (["restore", "--method", "interpolate", "--judge", "json:no_such_function"], "no_such_function"),
    (["compare", "--judge", "notaspec"], "notaspec"),
]


def _fill(argv: list[str], paths: dict[str, str]) -> list[str]:
    return [a.format(**paths) for a in argv]


@pytest.fixture()
def no_model_loads(monkeypatch):
    """Any weight load or world build in a bad-input case is a failure: validation comes first."""
    import transformers

    import core.service.commands as commands
    import core.world.model_pair as model_pair

    def refuse(*args, **kwargs):
        raise AssertionError("reached a model load or world build before the input was checked")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", refuse)
    monkeypatch.setattr(model_pair, "build_world", refuse)
    monkeypatch.setattr(commands, "build_world", refuse)


@pytest.mark.parametrize("argv,named", CASES, ids=[" ".join(a) or "(nothing)" for a, _ in CASES])
def test_bad_input_is_one_line_exit_2_nothing_written(argv, named, paths, no_model_loads, capsys):
    argv, named = _fill(argv, paths), named.format(**paths)
    before = _snapshot()
    code = main(argv)
    out, err = capsys.readouterr()
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Fix:" in lines[0], err
    assert named in lines[0] and "Traceback" not in err and out == "", err
    assert _snapshot() == before


def test_there_are_at_least_sixty_cases():
    assert len({" ".join(a) for a, _ in CASES}) >= 60


def test_a_device_this_machine_lacks_is_one_line(tiny_model_dir, capsys):
    for device, named in (("tpu", "tpu"), ("cuda:7", "cuda:7")):
        assert main(["evaluate", "--base", str(tiny_model_dir), "--device", device]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and named in err and "Fix:" in err


def test_precision_is_part_of_the_model_fingerprint(tiny_model_dir):
    """fp32 and bf16 answers are different answers: the fingerprint (every cache key's root) differs."""
    from core.world.models import ModelSpec, fingerprint

    fp32 = fingerprint(ModelSpec(str(tiny_model_dir), dtype="float32"))
    assert fp32 == fingerprint(ModelSpec(str(tiny_model_dir)))  # auto on a CPU is fp32
    assert fp32 != fingerprint(ModelSpec(str(tiny_model_dir), dtype="bfloat16"))
