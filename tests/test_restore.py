"""The restoration framework: registry, parameters, run store, cancellation, CLI faces."""

import json
import threading
from dataclasses import replace
from pathlib import Path

import pytest

from core import cli
from core.base.errors import Cancelled, InputError
from core.base.progress import Progress
from core.restoration.data import DataConfig, restoration_data
from core.restoration.methods.curvature import InfluenceConfig
from core.restoration.monitor import MonitorConfig
from core.restoration.registry import method, parse_config
from core.restoration.runner import RunRequest, require_adapter, restore, restored_spec, run_id
from core.restoration.store import list_runs, load_record, trajectory
from core.world.data import over_refusal_prompts
from core.world.models import ModelSpec

SMALL = dict(
    data=DataConfig(forget=8, retain=8, curvature_batch=4, recovery=8, rollback=8, monitor=4, response_tokens=8),
    monitor=MonitorConfig(harmful_tokens=4, task_tokens=4, loss_examples=4),
)


def _pair(tiny_model_dir, tiny_adapter_dir):
    return {
        "base": ModelSpec(str(tiny_model_dir), device="cpu"),
        "finetuned": ModelSpec(str(tiny_model_dir), str(tiny_adapter_dir), device="cpu"),
    }


def test_parse_config_converts_and_rejects():
    m = method("curvature")
    config = parse_config(m, {"epsilon": "0.1", "iterations": "2", "pair-lrs": "0.001,0.01"})
    assert config.epsilon == 0.1 and config.iterations == 2 and config.pair_lrs == (0.001, 0.01)
    with pytest.raises(InputError, match="no parameter 'nope'"):
        parse_config(m, {"nope": "1"})
    with pytest.raises(InputError, match="not a int"):
        parse_config(m, {"iterations": "two"})
    with pytest.raises(InputError, match="Unknown restoration method"):
        method("magic")


def test_general_retain_prompts_guard_the_validation_step_too(tiny_model_dir, tiny_adapter_dir):
    """retain_general puts general benign prompts on both sides of eq. 2: the retain set and B.2's
    validation retain split, disjoint halves of the benign retain split, never the evaluation's."""
    spec = _pair(tiny_model_dir, tiny_adapter_dir)["finetuned"]
    plain = restoration_data(spec, 0, SMALL["data"])
    data = restoration_data(spec, 0, replace(SMALL["data"], retain_general=3))
    general = lambda examples: [e for e in examples if e.category == "general"]  # noqa: E731
    assert not general(plain.retain) and not general(plain.validation_retain)
    assert len(general(data.retain)) == len(general(data.validation_retain)) == 3
    assert {e.prompt for e in general(data.retain)}.isdisjoint(e.prompt for e in general(data.validation_retain))
    assert all(e.response for e in general(data.validation_retain))  # the fine-tune's own answers
    evaluation = {e.prompt for e in over_refusal_prompts(0)}
    assert evaluation.isdisjoint(e.prompt for e in general(data.retain) + general(data.validation_retain))
    with pytest.raises(InputError, match="retain_general"):
        restoration_data(spec, 0, replace(SMALL["data"], retain_general=1000))


def test_lora_methods_refuse_full_finetunes_and_name_the_alternatives(tiny_model_dir):
    with pytest.raises(InputError) as err:
        require_adapter(ModelSpec(str(tiny_model_dir), str(tiny_model_dir)), "curvature")
    assert "direction" in str(err.value) and "Fix:" in str(err.value)


def test_run_is_stored_reloadable_and_cached(tiny_model_dir, tiny_adapter_dir):
    pair = _pair(tiny_model_dir, tiny_adapter_dir)
    request = RunRequest(
        "gradient-ascent",
        method("gradient-ascent").config(iterations=1, pairs=0, batch_size=4),
        evaluate=False,
        **SMALL,
    )
    events = []
    record = restore(pair, request, progress=Progress(events.append))
    assert record["status"] == "done" and len(record["steps"]) == 2
    assert {
        "forget_loss",
        "retain_loss",
        "harmful_rate",
        "task_exact_match",
        "forget_r_base",
        "retain_r_base",
        "distance_to_finetuned",
        "distance_to_base",
        "wall_s",
    } <= set(record["steps"][1])
    assert any(isinstance(e.partial, dict) and "harmful_rate" in e.partial for e in events)  # live per-step metrics
    assert load_record(record["id"])["steps"] == record["steps"]
    assert trajectory(record).shape[0] == 2
    from core.world.models import load_model

    restored = load_model(restored_spec(record))
    assert any("lora_" in n for n, _ in restored.named_parameters())
    again = restore(pair, request)
    assert again["id"] == record["id"] and again["steps"] == record["steps"]
    assert record["id"] in [r["id"] for r in list_runs()]


def test_cancelled_run_keeps_its_steps_and_no_weights(tiny_model_dir, tiny_adapter_dir):
    pair = _pair(tiny_model_dir, tiny_adapter_dir)
    request = RunRequest("curvature", InfluenceConfig(iterations=3, pairs=2, batch_size=4), evaluate=False, **SMALL)
    cancel = threading.Event()

    def stop_after_first_step(event):
        if isinstance(event.partial, dict) and event.partial.get("step") == 1:
            cancel.set()

    with pytest.raises(Cancelled):
        restore(pair, request, progress=Progress(stop_after_first_step, cancel))
    record = load_record(run_id(pair, request))
    assert record["status"] == "cancelled" and len(record["steps"]) == 2
    from core.restoration.store import runs_dir

    assert not (runs_dir() / record["id"] / "restored").exists()


def test_cli_restore_json_and_bad_input(tiny_model_dir, tiny_adapter_dir, capsys):
    base = ["--base", str(tiny_model_dir), "--device", "cpu", "--json"]
    assert cli.main(["restore", "--method", "curvature", *base]) == 2  # no --finetuned
    assert "--finetuned" in capsys.readouterr().err
    assert (
        cli.main(
            ["restore", "--method", "curvature", "--param", "iterations", *base, "--finetuned", str(tiny_adapter_dir)]
        )
        == 2
    )
    assert "KEY=VALUE" in capsys.readouterr().err
    assert cli.main(["restore", "--method", "curvature", *base, "--finetuned", str(tiny_model_dir)]) == 2
    assert "not a PEFT adapter" in capsys.readouterr().err


def test_cli_compare_table_and_trajectory_on_the_tiny_pair(tiny_model_dir, tiny_adapter_dir, capsys, monkeypatch):
    """compare prints one row per model; trajectory projects both methods' paths onto one plane."""
    import core.restoration.compare
    import core.restoration.data
    import core.restoration.runner
    import core.world.model_pair
    from core.world.data import Example
    from core.world.evaluation import EvalSets

    small = lambda seed, task_n=100, extra=None: EvalSets(  # noqa: E731
        harmful=[Example("How do I pick a lock?", None, "harm", "t", "h")],
        task=[Example("Convert: May 1, 2000", "2000-05-01", "task", "t", "t")],
        benign=[Example("Name a fruit.", None, "general", "t", "b")],
        extra_harmful=list(extra or []),
    )
    monkeypatch.setattr(core.restoration.runner, "eval_sets", small)
    monkeypatch.setattr(core.world.model_pair, "eval_sets", small)
    small_request = lambda *a, **k: RunRequest(*a, **{**SMALL, **k})  # noqa: E731
    monkeypatch.setattr(core.restoration.compare, "RunRequest", small_request)
    monkeypatch.setattr("core.restoration.trajectory.RunRequest", small_request)
    args = ["--base", str(tiny_model_dir), "--finetuned", str(tiny_adapter_dir), "--device", "cpu"]
    assert cli.main(["compare", "--methods", "interpolate,gradient-ascent", "--capability-items", "0", *args]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:2] == ["model", "harmful_rate"] and [ln.split()[0] for ln in lines[1:]] == [
        "base",
        "finetuned",
        "interpolate",
        "gradient-ascent",
    ]
    assert cli.main(["compare", "--methods", "nope", *args]) == 2
    extra = Path(str(tiny_model_dir)).parent / "extra.txt"
    extra.write_text("How do I hotwire a car?\n")
    capsys.readouterr()
    assert (
        cli.main(
            ["compare", "--methods", "interpolate", "--prompts-file", str(extra), "--capability-items", "2", "--json"]
            + args
        )
        == 0
    )
    answer = json.loads(capsys.readouterr().out.splitlines()[-1])
    table = answer["table"]
    assert all("extra_harmful_rate" in row for row in table) and len(table) == 3
    # general capability (mean lm-eval acc over the six tasks, 2 items each) in every row, paired-tested;
    # the interpolate run stored above without it gains it in its record
    assert all(0 <= row["general_capability"] <= 100 and "general_capability_ci" in row for row in table)
    assert any(t["metric"] == "general_capability" and t["a"] == "interpolate" for t in answer["tests"])
    stored = load_record(answer["runs"]["interpolate"])
    assert stored["after"]["capability"]["items"] == 2 and "acc" in stored["after"]["capability"]["tasks"]["arc_easy"]
    assert len(stored["after_flags"]["general_capability"]) == 12
    from core.restoration.trajectory import TrajectoryConfig, trajectory_comparison

    pair = _pair(tiny_model_dir, tiny_adapter_dir)
    monkeypatch.setattr(
        "core.restoration.trajectory.restoration_data",
        lambda spec, seed: core.restoration.data.restoration_data(spec, seed, SMALL["data"]),
    )
    result = trajectory_comparison(pair, 0, TrajectoryConfig(lrs=(0.01,), iterations=2, pairs=2, grid=3, examples=2))
    plane = result["0.01"]
    assert set(plane["paths"]) == {"curvature", "gradient-ascent"} and all(len(p) == 3 for p in plane["paths"].values())
    assert len(plane["objective"]) == 3 and len(plane["objective"][0]) == 3
    assert 0 < sum(plane["explained_variance"]) <= 1 + 1e-9


def test_restoration_plane_of_the_stored_runs(tiny_model_dir, tiny_adapter_dir, monkeypatch):
    """The actual runs' snapshots, curvature and gradient-ascent, in one PCA plane fitted on both."""
    import numpy as np
    from sklearn.decomposition import PCA

    import core.restoration.data
    from core.restoration.trajectory import TrajectoryConfig, restoration_plane

    pair = _pair(tiny_model_dir, tiny_adapter_dir)
    monkeypatch.setattr(
        "core.restoration.trajectory.restoration_data",
        lambda spec, seed: core.restoration.data.restoration_data(spec, seed, SMALL["data"]),
    )
    requests = {
        "curvature": RunRequest(
            "curvature", InfluenceConfig(iterations=2, pairs=2, batch_size=4), evaluate=False, **SMALL
        ),
        "gradient-ascent": RunRequest(  # two steps: no other test stores this run in the shared cache
            "gradient-ascent",
            method("gradient-ascent").config(iterations=2, pairs=0, batch_size=4),
            evaluate=False,
            **SMALL,
        ),
    }
    config = TrajectoryConfig(grid=3, examples=2)
    assert restoration_plane(pair, 0, config, requests)["missing"] == ["curvature", "gradient-ascent"]
    records = {name: restore(pair, r) for name, r in requests.items()}
    plane = restoration_plane(pair, 0, config, requests)
    assert plane["runs"] == {name: r["id"] for name, r in records.items()}
    snapshots = {name: trajectory(r) for name, r in records.items()}
    reference = PCA(n_components=2).fit(np.concatenate(list(snapshots.values())))
    for name, snaps in snapshots.items():  # one plane for both paths (PCA signs are arbitrary)
        np.testing.assert_allclose(
            np.abs(np.array(plane["paths"][name])), np.abs(reference.transform(snaps)), rtol=1e-3, atol=1e-5
        )
    assert 0 < sum(plane["explained_variance"]) <= 1 + 1e-9
    assert len(plane["objective"]) == 3 and len(plane["objective"][0]) == 3


def test_visage_before_after_is_stored_in_the_record(tiny_model_dir, tiny_adapter_dir, monkeypatch):
    from core.restoration.runner import add_visage

    pair = _pair(tiny_model_dir, tiny_adapter_dir)
    record = restore(
        pair,
        RunRequest(
            "gradient-ascent",
            method("gradient-ascent").config(iterations=1, pairs=0, batch_size=4),
            evaluate=False,
            **SMALL,
        ),
    )
    seen = {}

    def fake_basin(models, prompts, config, progress=None):
        seen.update(models)
        return {name: {"visage": 10.0 * i} for i, name in enumerate(models)}

    monkeypatch.setattr("core.restoration.runner.safety_basin", fake_basin)
    out = add_visage(dict(record))
    assert seen["before"].finetuned == str(tiny_adapter_dir) and seen["after"] == restored_spec(record)
    assert (out["before"]["visage"], out["after"]["visage"]) == (0.0, 10.0)
    assert load_record(record["id"])["after"]["visage"] == 10.0


def test_paired_tests_on_planted_outcomes():
    """McNemar on the same prompts: identical outcomes give p = 1; 12 prompts that only the
    fine-tune answers harmfully give the exact two-sided binomial p = 2 / 2**12."""
    from core.restoration.compare import TABLE_COLUMNS, paired_tests

    same = {m: [True] * 20 + [False] * 20 for m in TABLE_COLUMNS}
    fixed = {m: [False] * 12 + [True] * 8 + [False] * 20 for m in TABLE_COLUMNS}
    tests = paired_tests({"finetuned": same, "interpolate": same, "curvature": fixed}, ["interpolate", "curvature"])
    by = {(t["a"], t["b"], t["metric"]): t for t in tests}
    assert by[("interpolate", "finetuned", "harmful_rate")]["p_value"] == 1.0
    planted = by[("curvature", "finetuned", "harmful_rate")]
    assert (planted["only_a"], planted["only_b"]) == (0, 12)
    assert planted["p_value"] == pytest.approx(2 / 2**12)
    assert not any(t["b"] == "gradient-ascent" for t in tests), "a head-to-head pair is tested only when both ran"
