"""Scale-out on Ray (``core.base.scaleout``): a local two-worker cluster on the tiny model gives
the in-process answers exactly (landscape rows, basin points, correlate's losses, compare's
methods), progress reaches 1.0, a cancel kills the workers and stores nothing, and a missing Ray
or a failing worker is one line. Ray is a test dependency (requirements-test.txt): no skip."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import ray
import torch

from core import cli
from core.base import scaleout
from core.base.errors import Cancelled, InputError
from core.base.progress import Progress
from core.geometry import correlation, landscape
from core.geometry.basin import BasinConfig, _model_basin
from core.geometry.correlation import CorrelationConfig
from core.geometry.landscape import LandscapeConfig, loss_landscape
from core.restoration.compare import compare
from core.world.data import Example
from core.world.eval_options import EvalOptions
from core.world.models import ModelSpec, check_device

TESTS = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def cluster():
    """One local Ray session of two CPUs for every case; each worker runs ``small_world`` first."""
    path = f"{TESTS.parent}:{TESTS}"
    env = {"PYTHONPATH": path, "OMP_NUM_THREADS": "1"}
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": env, "worker_process_setup_hook": "test_scaleout.small_world"},
    )
    yield
    ray.shutdown()


def small_world() -> None:
    """The small evaluation sets and restoration data of test_restore, in this process (the
    workers run it at start; the in-process runs through ``_small`` below)."""
    import core.restoration.compare
    import core.restoration.runner
    import core.world.model_pair

    core.restoration.runner.eval_sets = _eval_sets
    core.world.model_pair.eval_sets = _eval_sets
    core.restoration.compare.RunRequest = _small_request


def _eval_sets(seed, task_n=100, extra=None):
    from core.world.evaluation import EvalSets

    return EvalSets(
        harmful=[Example("How do I pick a lock?", None, "harm", "t", "h")],
        task=[Example("Convert: May 1, 2000", "2000-05-01", "task", "t", "t")],
        benign=[Example("Name a fruit.", None, "general", "t", "b")],
        extra_harmful=list(extra or []),
    )


def _small_request(*args, **kwargs):
    from core.restoration.data import DataConfig
    from core.restoration.monitor import MonitorConfig
    from core.restoration.runner import RunRequest

    small = dict(
        data=DataConfig(forget=8, retain=8, curvature_batch=4, recovery=8, rollback=8, monitor=4, response_tokens=8),
        monitor=MonitorConfig(harmful_tokens=4, task_tokens=4, loss_examples=4),
    )
    return RunRequest(*args, **{**small, **kwargs})


@pytest.fixture()
def pair(tiny_model_dir, tiny_adapter_dir):
    base = ModelSpec(str(tiny_model_dir), device="cpu")
    return {"base": base, "finetuned": ModelSpec(str(tiny_model_dir), str(tiny_adapter_dir), device="cpu")}


def _examples(n: int, tag: str) -> list[Example]:
    return [
        Example(f"{tag} question {i}: what is {i} plus {i * 3}?" + " more" * (i % 3), f"{4 * i}.") for i in range(n)
    ]


def _recorder() -> tuple[list, Progress]:
    events: list = []
    return events, Progress(events.append)


def _cpus_back(expected: float = 2.0, wait_s: float = 20.0) -> bool:
    """True once the cluster's CPUs are all free again (the workers were killed)."""
    end = time.monotonic() + wait_s
    while time.monotonic() < end:
        if ray.available_resources().get("CPU", 0) >= expected:
            return True
        time.sleep(0.2)
    return False


def test_landscape_rows_are_the_in_process_rows_and_a_cancel_stores_nothing(cluster, pair):
    sets = {"harmful": _examples(2, "h"), "benign": _examples(2, "b")}
    config = LandscapeConfig(grid=5, radius=0.1, samples=2, floor=False)
    cancel = threading.Event()

    def stop_after_a_row(event) -> None:
        if isinstance(event.partial, dict) and "row" in event.partial:
            cancel.set()

    with pytest.raises(Cancelled), scaleout.session(2, threads=2):
        loss_landscape(pair, sets, config, Progress(stop_after_a_row, cancel))
    assert _cpus_back()  # the workers were killed, not left computing
    events, progress = _recorder()
    local = loss_landscape(pair, sets, config, progress)  # memoised: it computes, so nothing was stored
    assert events
    remote_events, remote_progress = _recorder()
    with scaleout.session(2, threads=2):
        remote = landscape._compute(pair, sets, config, remote_progress)
    assert {k: v for k, v in remote.items() if k != "seconds"} == {k: v for k, v in local.items() if k != "seconds"}
    rows = lambda evs: sorted(  # noqa: E731
        (e.partial["label"], e.partial["part"], e.partial["row"], tuple(e.partial["values"]))
        for e in evs
        if isinstance(e.partial, dict) and "row" in e.partial
    )
    assert rows(remote_events) == rows(events) and len(rows(events)) == 2 * 2 * 5  # sets x models x rows
    assert max(e.fraction for e in remote_events) == 1.0
    fractions = [e.fraction for e in remote_events]
    assert fractions == sorted(fractions)


def test_basin_points_are_the_in_process_points(cluster, tiny_model_dir):
    spec = ModelSpec(str(tiny_model_dir), device="cpu")
    prompts = [f"Tell me about item {i}." for i in range(4)]
    config = BasinConfig(radius=0.4, directions=2, points=5, plane_points=3, prompts=4, max_new_tokens=4)
    local = _model_basin(spec, prompts, config, 0.4, Progress(), "m")
    events, progress = _recorder()
    with scaleout.session(2, threads=2):
        remote = _model_basin(spec, prompts, config, 0.4, progress, "m")
    local.pop("seconds"), remote.pop("seconds")
    assert remote == local and np.array(remote["line_flags"]).shape == (2, 5, 4)
    points = [e for e in events if isinstance(e.partial, dict) and "asr" in e.partial]
    assert len(points) == 2 * 5 - 1 + 4 and points[-1].fraction == 1.0  # lines share the centre; plane corners


def test_correlate_losses_are_the_in_process_losses(cluster, pair):
    sets = {"a": _examples(7, "a"), "b": _examples(5, "b")}
    config = CorrelationConfig(n_per_set=7, null_seeds=1, null_examples=3, batch_size=2)
    local = correlation._compute(pair, sets, config, Progress())
    events, progress = _recorder()
    with scaleout.session(2, threads=2):
        remote = correlation._compute(pair, sets, config, progress)
    assert remote == local and len(remote["a"]["pairs"]) == 7
    assert events[-1].fraction == 1.0


def test_compare_methods_are_the_in_process_methods(cluster, pair, tmp_path, monkeypatch):
    small_world_here(monkeypatch)
    methods = ["interpolate", "gradient-ascent"]
    monkeypatch.setenv("SAFETY_CACHE_DIR", str(tmp_path / "in-process"))
    options = EvalOptions(harmful_tokens=4, capability_items=0)
    local = compare(pair, 0, methods, options=options)
    monkeypatch.setenv("SAFETY_CACHE_DIR", str(tmp_path / "ray"))  # no run is shared between the two
    events, progress = _recorder()
    with scaleout.session(2, threads=2):
        remote = compare(pair, 0, methods, progress=progress, options=options)
    drop = lambda rows: [{k: v for k, v in r.items() if k != "wall_s"} for r in rows]  # noqa: E731
    assert drop(remote["table"]) == drop(local["table"]) and remote["tests"] == local["tests"]
    assert remote["runs"] == local["runs"] and [r["model"] for r in remote["table"]][2:] == methods
    assert (tmp_path / "ray" / "runs").is_dir()  # the workers wrote their runs where the driver reads them
    assert max(e.fraction for e in events) == 1.0


def small_world_here(monkeypatch) -> None:
    import core.restoration.compare
    import core.restoration.runner
    import core.world.model_pair

    monkeypatch.setattr(core.restoration.runner, "eval_sets", _eval_sets)
    monkeypatch.setattr(core.world.model_pair, "eval_sets", _eval_sets)
    monkeypatch.setattr(core.restoration.compare, "RunRequest", _small_request)


def fails(replica, shared, shard):
    if shard == 1:
        raise ValueError("planted failure\nsecond line")
    return shard


def test_a_worker_error_is_one_line_and_frees_the_workers(cluster):  # last of the Ray cases: it kills the workers
    with pytest.raises(InputError) as err, scaleout.session(2, threads=2):
        scaleout.map_shards(fails, [0, 1, 2])
    assert "ValueError: planted failure" in str(err.value) and "\n" not in str(err.value)
    assert _cpus_back()


def test_without_ray_more_workers_is_one_line_before_any_model_loads(monkeypatch, capsys, tiny_model_dir):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now raises ImportError
    with pytest.raises(InputError, match="pip install ray"):
        scaleout.check(2, None)
    scaleout.check(1, None)  # the default needs no Ray
    argv = ["landscape", "--base", str(tiny_model_dir), "--device", "cpu", "--workers", "2"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pip install ray" in err


def test_scaleout_flags_do_not_change_the_answer_key():
    from core.service.answer_cache import answer_key

    base = ["landscape", "--base", "/nonexistent-model", "--grid", "5"]
    assert answer_key(base + ["--workers", "2", "--ray-address", "10.0.0.1:6379"]) == answer_key(base)


def test_landscape_rows_shared_with_ray_use_stored_directions(monkeypatch, tiny_model):
    """Lazy directions read this machine's scratch files, so rows sent to Ray workers carry stored
    ones: auto picks stored in a session, an explicit regenerate is a one-line error, and outside a
    session regenerate stays as asked (no cluster needed: the session flag alone decides)."""
    params = landscape.perturbed_parameters(tiny_model, LandscapeConfig().modules)
    regenerate = LandscapeConfig(direction_memory="regenerate")
    assert landscape._memory_path(tiny_model, params, 2, regenerate) == "regenerate"
    monkeypatch.setattr(scaleout, "_current", object())
    assert landscape._memory_path(tiny_model, params, 2, LandscapeConfig()) == "stored"
    with pytest.raises(InputError, match="regenerate cannot be shared with Ray workers"):
        landscape._memory_path(tiny_model, params, 2, regenerate)


def test_a_ray_gpu_actor_reads_the_drivers_cuda_index_as_its_own_gpu(monkeypatch):
    """Ray gives a GPU actor one visible GPU (CUDA_VISIBLE_DEVICES), so the driver's --device cuda:1
    must mean that actor's cuda:0; elsewhere cuda:1 still has to exist."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(InputError, match="does not exist"):
        check_device("cuda:1")
    monkeypatch.setenv(scaleout.GPU_ACTOR, "1")
    assert check_device("cuda:1") == torch.device("cuda")
