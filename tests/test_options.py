"""One source of defaults: every ``option(...)`` field of a config dataclass reaches the command line
(``core.service.commands.parser``) with the dataclass's own default, its help and its type, and
``argv_for`` writes exactly the tokens that parse back to a changed value."""

from __future__ import annotations

import argparse
import re
import typing

import pytest

from core.base.errors import InputError
from core.base.options import argv_for, defaults, has_quick, preset_values, user_fields
from core.geometry.registry import ANALYSES
from core.restoration.trajectory import TrajectoryConfig
from core.service.commands import RunFlags, parser
from core.world.capability import CapabilityConfig
from core.world.choice import WorldChoice
from core.world.demo import WorldConfig
from core.world.evaluation import EvalOptions
from core.world.model_pair import ModelOptions

WORLD = (WorldChoice, WorldConfig)
COMMON = (*WORLD, RunFlags, ModelOptions)

# The config classes whose option fields each subcommand exposes.
COMMAND_CONFIGS: dict[str, tuple[type, ...]] = {
    "world": (*WORLD, RunFlags),
    "evaluate": (*COMMON, EvalOptions),
    **{name: (*COMMON, *a.configs) for name, a in ANALYSES.items()},
    "restore": (*COMMON, EvalOptions),
    "compare": (*COMMON, EvalOptions),
    "trajectory": (*COMMON, TrajectoryConfig),
    "capability": (*COMMON, CapabilityConfig),
    "claims": COMMON,
    "methods": (RunFlags,),
    "warmup": (RunFlags,),
}
# What a subcommand needs besides its options to parse at all.
REQUIRED = {"restore": ["--method", "curvature"]}

ALL_CONFIGS = sorted({c for cs in COMMAND_CONFIGS.values() for c in cs}, key=lambda c: c.__qualname__)


def _subparsers(ap: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    (action,) = [a for a in ap._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def _parse(ap: argparse.ArgumentParser, command: str, *extra: str) -> argparse.Namespace:
    return ap.parse_args([command, *REQUIRED.get(command, []), *extra])


def _shown(value) -> str:
    return ",".join(str(v) for v in value) if isinstance(value, tuple) else str(value)


def _changed(f, default):
    """A value of the field's kind that differs from its default (within its declared choices)."""
    meta = f.metadata
    if isinstance(default, bool):
        return not default
    if meta.get("choices"):
        return next(c for c in meta["choices"] if c != default)
    if isinstance(default, tuple):
        return default[1:] if len(default) > 1 else (*default, *default) if default else ("x",)
    if isinstance(default, int):
        high = meta.get("high")
        return default - 1 if high is not None and default + 1 > high else default + 1
    if isinstance(default, float):
        return default / 2 if default else 0.5
    if default is None:
        return "some/dir"
    return f"{default}-changed"


def _cases() -> list[tuple[str, type, str]]:
    return [(cmd, cls, f.name) for cmd, classes in COMMAND_CONFIGS.items() for cls in classes for f in user_fields(cls)]


@pytest.fixture(scope="module")
def ap() -> argparse.ArgumentParser:
    return parser()


def test_the_table_covers_every_subcommand(ap):
    assert set(_subparsers(ap)) == set(COMMAND_CONFIGS), "a subcommand was added or removed: update COMMAND_CONFIGS"
    assert all(user_fields(c) for c in ALL_CONFIGS), [c.__name__ for c in ALL_CONFIGS if not user_fields(c)]


@pytest.mark.parametrize("command", list(COMMAND_CONFIGS))
def test_bare_subcommand_parses_to_the_dataclass_defaults(ap, command):
    args = _parse(ap, command)
    wrong = []
    for cls in COMMAND_CONFIGS[command]:
        for name, default in defaults(cls).items():
            got = getattr(args, name, "<missing>")
            if got != default or type(got) is not type(default):
                wrong.append(f"{cls.__name__}.{name}: parsed {got!r}, dataclass default {default!r}")
    assert not wrong, f"`{command}` disagrees with its config dataclasses:\n" + "\n".join(wrong)


@pytest.mark.parametrize("cls", ALL_CONFIGS, ids=lambda c: c.__name__)
def test_argv_for_the_defaults_is_empty(cls):
    assert argv_for(cls, defaults(cls)) == []
    assert argv_for(cls, {}) == []


@pytest.mark.parametrize("command", list(COMMAND_CONFIGS))
def test_argv_for_a_changed_value_round_trips_through_the_parser(ap, command):
    wrong = []
    for cls in COMMAND_CONFIGS[command]:
        for f in user_fields(cls):
            value = _changed(f, defaults(cls)[f.name])
            tokens = argv_for(cls, {**defaults(cls), f.name: value})
            try:
                got = getattr(_parse(ap, command, *tokens), f.name)
            except InputError as err:
                wrong.append(f"{cls.__name__}.{f.name}={value!r}: {tokens} -> {err}")
                continue
            if got != value:
                wrong.append(f"{cls.__name__}.{f.name}={value!r}: {tokens} parsed back as {got!r}")
    assert not wrong, f"`{command}`:\n" + "\n".join(wrong)


def test_tuple_and_bool_fields_round_trip(ap):
    from core.geometry.landscape import LandscapeConfig

    assert defaults(LandscapeConfig)["modules"] == ("self_attn", "mlp")
    tokens = argv_for(LandscapeConfig, {"modules": ("mlp",)})
    assert tokens == ["--modules", "mlp"]
    assert _parse(ap, "landscape", *tokens).modules == ("mlp",)
    tokens = argv_for(LandscapeConfig, {"modules": ("mlp", "self_attn")})
    assert _parse(ap, "landscape", *tokens).modules == ("mlp", "self_attn")

    tokens = argv_for(ModelOptions, {"trust_remote_code": True})
    assert tokens == ["--trust-remote-code"]
    assert _parse(ap, "landscape", *tokens).trust_remote_code is True
    tokens = argv_for(RunFlags, {"json": True, "threads": 2})
    args = _parse(ap, "methods", *tokens)
    assert (args.json, args.threads) == (True, 2)

    tokens = argv_for(TrajectoryConfig, {"lrs": (0.02, 0.1)})
    assert _parse(ap, "trajectory", *tokens).lrs == (0.02, 0.1)


def test_option_fields_accept_values_of_their_declared_type(ap):
    """The CLI converts with the *default's* type: a ``float`` field with an ``int`` default would
    refuse ``0.5``. Every field's annotation and default must agree."""
    wrong = []
    for command, classes in COMMAND_CONFIGS.items():
        for cls in classes:
            hints = typing.get_type_hints(cls)
            for f in user_fields(cls):
                hint, default = hints[f.name], defaults(cls)[f.name]
                if hint is float and not f.metadata.get("choices"):
                    try:
                        got = getattr(_parse(ap, command, _flag(ap, command, f.name), "0.5"), f.name)
                    except InputError as err:
                        got = err
                    if got != 0.5:
                        field = f"{command}: {cls.__name__}.{f.name}"
                        wrong.append(f"{field}: float field (default {default!r}) parsed '0.5' as {got!r}")
                elif hint in (int, str, bool) and type(default) is not hint:
                    wrong.append(f"{cls.__name__}.{f.name}: annotated {hint.__name__}, default {default!r}")
    assert not wrong, "\n".join(sorted(set(wrong)))


def _flag(ap, command: str, dest: str) -> str:
    sub = _subparsers(ap)[command]
    (action,) = [a for a in sub._actions if a.dest == dest]
    return action.option_strings[0]


@pytest.mark.parametrize("cls", ALL_CONFIGS, ids=lambda c: c.__name__)
def test_every_option_has_help(cls):
    empty = [f.name for f in user_fields(cls) if not str(f.metadata.get("help") or "").strip()]
    assert not empty, f"{cls.__name__}: option fields without help: {empty}"


@pytest.mark.parametrize("command", list(COMMAND_CONFIGS))
def test_help_of_each_subcommand_names_each_default(ap, command, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    full = " ".join(_subparsers(ap)[command].format_help().split())
    assert "options:" in full
    text = full.split("options:", 1)[1]  # the option entries, not the usage line
    missing = []
    for cls in COMMAND_CONFIGS[command]:
        for f in user_fields(cls):
            default = defaults(cls)[f.name]
            flag = _flag(ap, command, f.name)
            help_text = " ".join(str(f.metadata["help"]).split())
            # "--flag[, --no-flag] [METAVAR] <help> (default X)" (argparse's booleans say "default: X")
            entry = (
                re.escape(flag)
                + r"(?:, --no-\S+)?(?: \S+)? "
                + re.escape(help_text)
                + r" \(default:? "
                + re.escape(_shown(default))
                + r"\)"
            )
            if not re.search(entry, text):
                missing.append(f"{flag} ({cls.__name__}.{f.name}, default {_shown(default)!r})")
    message = f"`{command} --help` does not state these defaults:\n" + "\n".join(missing)
    assert not missing, message + "\n--- help:\n" + text


QUICK = [(name, a) for name, a in ANALYSES.items()]


def test_each_analysis_declares_a_quick_preset():
    assert {name for name, a in QUICK if any(has_quick(c) for c in a.configs)} == {
        "correlate",
        "landscape",
        "curvature",
        "basin",
    }
    assert all(getattr(a.configs[0], "quick_minutes", 0) > 0 for _, a in QUICK), "the page states the quick time"


@pytest.mark.parametrize("name,analysis", QUICK, ids=[n for n, _ in QUICK])
def test_quick_preset_parses_within_bounds_and_is_smaller(ap, name, analysis):
    """The quick values parse back through the CLI to themselves, lie within each field's bounds
    and choices, validate as a config, and never exceed the paper-sized default."""
    tokens = [t for c in analysis.configs for t in argv_for(c, preset_values(c, "quick"))]
    args = _parse(ap, name, *tokens)
    for cls in analysis.configs:
        quick, paper = preset_values(cls, "quick"), preset_values(cls, "paper")
        assert paper == defaults(cls)
        for f in user_fields(cls):
            value, meta = quick[f.name], f.metadata
            assert getattr(args, f.name) == value, f.name
            assert meta["low"] is None or value >= meta["low"], f.name
            assert meta["high"] is None or value <= meta["high"], f.name
            assert not meta.get("choices") or value in meta["choices"], f.name
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                assert value <= paper[f.name], f"{f.name}: a quick value larger than the paper-sized one"
        config = cls(**quick)
        if hasattr(config, "validate"):
            config.validate()
