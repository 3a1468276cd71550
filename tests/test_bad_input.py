"""Bad input, table-driven: every case exits with code 2, prints exactly one line
``error: ... Fix: ...`` naming the input, shows no traceback and writes nothing to the cache."""

from __future__ import annotations

import pytest

from core.base.paths import cache_dir
from core.cli import main


def _snapshot() -> set[str]:
    root = cache_dir()
    return {str(p.relative_to(root)) for p in root.rglob("*") if "results" not in p.parts}


CASES = [
    (["correlate", "--n", "-5"], "--n"),
    (["correlate", "--n", "many"], "--n"),
    (["correlate", "--tokens", "some"], "--tokens"),
    (["landscape", "--grid", "100000"], "--grid"),
    (["landscape", "--grid", "1"], "--grid"),
    (["landscape", "--samples", "0"], "--samples"),
    (["landscape", "--directions", "sideways"], "--directions"),
    (["curvature", "--tol", "nan"], "--tol"),
    (["curvature", "--k", "0"], "--k"),
    (["curvature", "--samples", "-1"], "--samples"),
    (["basin", "--prompts", "0"], "--prompts"),
    (["basin", "--max-new-tokens", "-1"], "--max-new-tokens"),
    (["basin", "--radius", "inf"], "--radius"),
    (["evaluate", "--dtype", "int8"], "--dtype"),
    (["evaluate", "--seed", "-1"], "--seed"),
    (["evaluate", "--harmful-examples", "-3"], "--harmful-examples"),
    (["world", "--seed", "abc"], "--seed"),
    (["trajectory", "--lrs", "fast,slow"], "--lrs"),
    (["correlate", "--no-such-option"], "--no-such-option"),
    (["no-such-command"], "no-such-command"),
    ([], "command"),
]


@pytest.mark.parametrize("argv,named", CASES, ids=[" ".join(a) or "(nothing)" for a, _ in CASES])
def test_bad_option_is_one_line_exit_2_nothing_written(argv, named, capsys):
    before = _snapshot()
    assert main(argv) == 2
    out, err = capsys.readouterr()
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Fix:" in lines[0], err
    assert named in lines[0] and "Traceback" not in err and out == ""
    assert _snapshot() == before


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
