"""The contract every registered restoration method keeps (in the spirit of peft's TEST_CASES: one
table of tiny settings, every test parametrised over ``core.restoration.registry.METHODS``).

On the tiny Llama pair (random 2-layer model + LoRA adapter) with tiny data, each method:

* records at least two steps (the fine-tuned starting point and at least one more);
* stores the artifact kind it declares: a LoRA-only method (``needs_adapter``) returns an adapter,
  and each method's kind on an adapter pair is the one in ``ARTIFACT``;
* stops on cancel (the event set once the first step is recorded): ``Cancelled`` is raised, the
  record says "cancelled" and keeps its steps, and no ``restored/`` directory is written;
* rejects an unknown parameter and an ill-typed numeric value with ``InputError``.

``resta`` and ``safelora`` get a hand-made unaligned model (as in test_weight_arithmetic), so no
harmful fine-tune is trained here.
"""

from __future__ import annotations

import threading
from dataclasses import fields, is_dataclass

import pytest
import torch

import core.restoration.methods  # noqa: F401  (importing the package registers every method)
import core.restoration.weights as weights
from core.base.errors import Cancelled, InputError
from core.base.progress import Progress
from core.restoration.data import DataConfig
from core.restoration.monitor import MonitorConfig
from core.restoration.registry import METHODS, parse_config, settable
from core.restoration.runner import RunRequest, restore, run_id
from core.restoration.store import load_record, runs_dir
from core.world.models import ModelSpec, load_model

SMALL = dict(
    data=DataConfig(forget=8, retain=8, curvature_batch=4, recovery=8, rollback=8, monitor=4, response_tokens=8),
    monitor=MonitorConfig(harmful_tokens=4, task_tokens=4, loss_examples=4),
)

# Tiny settings per method (a few seconds each on the tiny pair); a new method must add a row.
TINY: dict[str, dict] = {
    "curvature": dict(iterations=1, pairs=2, batch_size=4),
    "gradient-ascent": dict(iterations=1, pairs=0, batch_size=4),
    "interpolate": dict(alpha=0.5),
    "resta": dict(scale=0.5),
    "safelora": dict(threshold=0.5),
    "direction": dict(rounds=1, warmup_rounds=1, batch_size=4),
}
# The artifact each method stores when the fine-tune is a LoRA adapter.
ARTIFACT: dict[str, str] = {
    "curvature": "adapter",
    "gradient-ascent": "adapter",
    "interpolate": "adapter",  # B -> (1 - alpha) B keeps the adapter
    "resta": "model",  # the adapter is merged, the safety vector added to every weight
    "safelora": "adapter",  # B -> C B
    "direction": "model",  # weights reset to base values on the merged model
}
NAMES = list(METHODS)
RUN_SEED, CANCEL_SEED = 10, 11  # seeds no other test uses: these runs never meet another test's finished run


def _pair(tiny_model_dir, tiny_adapter_dir) -> dict[str, ModelSpec]:
    return {
        "base": ModelSpec(str(tiny_model_dir), device="cpu"),
        "finetuned": ModelSpec(str(tiny_model_dir), str(tiny_adapter_dir), device="cpu"),
    }


def _request(name: str, seed: int = 0, unaligned: str = "") -> RunRequest:
    """The tiny run of ``name``; Safe LoRA reads V's unaligned original from ``unaligned``."""
    m = METHODS[name]
    extra = {"unaligned": unaligned} if name == "safelora" else {}
    return RunRequest(name, m.config(**TINY[name], **extra), seed=seed, evaluate=False, **SMALL)


@pytest.fixture(scope="module")
def unaligned_dir(tmp_path_factory, tokenizer, tiny_model_dir):
    """A hand-made unaligned model: every weight of the tiny model moved by -0.05 (1 + 0.1 N(0, 1))."""
    model = load_model(ModelSpec(str(tiny_model_dir), device="cpu"))
    torch.manual_seed(7)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(-0.05 * (1 + 0.1 * torch.randn_like(p)))
    path = tmp_path_factory.mktemp("contract-unaligned") / "model"
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(autouse=True)
def fake_unaligned(monkeypatch, unaligned_dir):
    """``resta`` and ``safelora`` read the hand-made unaligned model instead of training one."""
    calls = []

    def fake(base, data, config, progress=None):
        calls.append(base)
        return unaligned_dir

    monkeypatch.setattr(weights, "unaligned_model_dir", fake)
    return calls


def test_every_registered_method_has_a_row():
    assert NAMES, "no method registered"
    assert set(NAMES) == set(TINY) == set(ARTIFACT), f"registered {sorted(NAMES)}; TINY/ARTIFACT list {sorted(TINY)}"


@pytest.mark.parametrize("name", NAMES)
def test_declared_artifact_relation(name):
    m = METHODS[name]
    assert ARTIFACT[name] in ("adapter", "model")
    if m.needs_adapter:
        assert ARTIFACT[name] == "adapter", f"{name} works on LoRA adapters only, so it must return one"
    assert m.summary.strip() and is_dataclass(m.config) and callable(m.run)


@pytest.mark.parametrize("name", NAMES)
def test_run_records_steps_and_its_artifact(name, tiny_model_dir, tiny_adapter_dir, fake_unaligned, unaligned_dir):
    pair = _pair(tiny_model_dir, tiny_adapter_dir)
    events = []
    request = _request(name, seed=RUN_SEED, unaligned=str(unaligned_dir))
    record = restore(pair, request, progress=Progress(events.append))
    assert record["status"] == "done" and record["method"] == name
    assert len(record["steps"]) >= 2, record["steps"]
    assert [s["step"] for s in record["steps"]] == list(range(len(record["steps"])))
    assert {"harmful_rate", "task_exact_match", "distance_to_finetuned", "distance_to_base"} <= set(record["steps"][-1])
    assert record["steps"][0]["distance_to_finetuned"] == pytest.approx(0.0, abs=1e-6)
    assert record["artifact"] == ARTIFACT[name]
    if METHODS[name].needs_adapter:
        assert record["artifact"] == "adapter"
    restored = runs_dir() / record["id"] / "restored"
    assert restored.is_dir()
    if record["artifact"] == "adapter":
        assert (restored / "adapter_config.json").exists()
    else:
        assert (restored / "config.json").exists() and not (restored / "adapter_config.json").exists()
    assert load_record(record["id"])["steps"] == record["steps"]
    if name == "resta":
        assert fake_unaligned, f"{name} did not read the (fake) unaligned model"
    if name == "safelora":
        assert record["notes"]["unaligned"] == str(unaligned_dir)


@pytest.mark.parametrize("name", NAMES)
def test_cancel_after_the_first_step_stops_and_writes_no_weights(name, tiny_model_dir, tiny_adapter_dir, unaligned_dir):
    pair = _pair(tiny_model_dir, tiny_adapter_dir)
    request = _request(name, seed=CANCEL_SEED, unaligned=str(unaligned_dir))
    cancel = threading.Event()

    def stop_after_first_step(event):
        if isinstance(event.partial, dict) and event.partial.get("step") == 0:
            cancel.set()

    with pytest.raises(Cancelled):
        restore(pair, request, progress=Progress(stop_after_first_step, cancel))
    assert cancel.is_set(), "the method never recorded a first step"
    record = load_record(run_id(pair, request))
    assert record is not None and record["status"] == "cancelled"
    assert len(record["steps"]) >= 1 and record["steps"][0]["step"] == 0
    assert record["artifact"] is None
    assert not (runs_dir() / record["id"] / "restored").exists()


@pytest.mark.parametrize("name", NAMES)
def test_parse_config_rejects_unknown_and_ill_typed_parameters(name):
    m = METHODS[name]
    with pytest.raises(InputError, match="no_such_param"):
        parse_config(m, {"no_such_param": "1"})
    numeric = [k for k, v in settable(m.config()).items() if type(v) in (int, float)]
    assert numeric, f"{name} has no numeric parameter"
    for key in numeric:
        with pytest.raises(InputError, match=key):
            parse_config(m, {key: "abc"})
        with pytest.raises(InputError):
            parse_config(m, {key.replace("_", "-"): "abc"})


def _text(value) -> str:
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value)
    return str(value).lower() if isinstance(value, bool) else str(value)


@pytest.mark.parametrize("name", NAMES)
def test_parse_config_reads_back_every_default(name):
    """Every settable parameter, written as a user would, parses to its default; nested recipe
    configs are not settable."""
    m = METHODS[name]
    default = m.config()
    params = settable(default)
    assert all(not is_dataclass(v) for v in params.values())
    nested = {f.name for f in fields(default) if is_dataclass(getattr(default, f.name))}
    assert set(params) | nested == {f.name for f in fields(default)}
    assert parse_config(m, {k: _text(v) for k, v in params.items()}) == default
    assert parse_config(m, {}) == default
