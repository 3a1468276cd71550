"""One source of defaults: config-dataclass fields that carry their own help.

A field declared with ``option(default, help)`` becomes a command-line option (``--name``, or the
``flag`` given) with that default and help, and a dashboard widget with the same default and
tooltip; fields declared without it are fixed recipe values, not user options. The CLI parser
and the pages read the dataclasses, so a default is written once.

Presets live beside the defaults: ``option(..., quick=v)`` is the field's value in the "quick
preview" preset (absent: its default); ``preset_values(cls, "quick")`` collects them and
``preset_values(cls, "paper")`` is the defaults (the paper-sized settings).
"""

from __future__ import annotations

import argparse
import math
from dataclasses import MISSING, Field, field, fields
from typing import Any


def option(
    default: Any,
    help: str,
    *,
    label: str | None = None,
    flag: str | None = None,
    choices: tuple | None = None,
    low: float | None = None,
    high: float | None = None,
    quick: Any = MISSING,
) -> Any:
    """A dataclass field that users set: ``help`` is the option's help and the widget's tooltip,
    ``label`` the widget's label (default: the field name), ``flag`` renames the CLI option, and
    ``choices`` / ``low`` / ``high`` bound the widget (``choices`` the CLI too); ``quick`` is the
    value in the quick-preview preset (absent: the default)."""
    meta = {"help": help, "label": label, "flag": flag, "choices": choices, "low": low, "high": high}
    if quick is not MISSING:
        meta["quick"] = quick
    return field(default=default, metadata=meta)


def user_fields(cls: type) -> list[Field]:
    """The fields of ``cls`` declared with ``option``."""
    return [f for f in fields(cls) if "help" in f.metadata]


def default_of(f: Field) -> Any:
    return f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]


def flag_of(f: Field) -> str:
    return "--" + (f.metadata.get("flag") or f.name).replace("_", "-")


def _shown(value: Any) -> str:
    return ",".join(str(v) for v in value) if isinstance(value, tuple) else str(value)


def _list_of(item: type):
    def parse(raw: str) -> tuple:
        return tuple(item(x.strip()) for x in raw.split(",") if x.strip())

    return parse


def _bounded(kind: type, low: float | None, high: float | None):
    """An argparse type: ``kind`` of the raw text, finite, and within [low, high] where given."""

    def parse(raw: str):
        value = kind(raw)
        if isinstance(value, float) and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{raw} is not a finite number")
        if (low is not None and value < low) or (high is not None and value > high):
            bounds = f"[{low if low is not None else '-inf'}, {high if high is not None else 'inf'}]"
            raise argparse.ArgumentTypeError(f"{raw} is outside {bounds}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its "invalid int value" message
    return parse


def add_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """Add one option per user field of ``cls``; ``dest`` is the field name."""
    for f in user_fields(cls):
        default, meta = default_of(f), f.metadata
        text = f"{meta['help']} (default {_shown(default)})"
        if isinstance(default, bool):
            parser.add_argument(
                flag_of(f), dest=f.name, action=argparse.BooleanOptionalAction, default=default, help=text
            )
            continue
        if isinstance(default, tuple):
            kind = _list_of(type(default[0]) if default else str)
        else:
            kind = _bounded(type(default) if default is not None else str, meta["low"], meta["high"])
        parser.add_argument(flag_of(f), dest=f.name, type=kind, default=default, choices=meta["choices"], help=text)


def from_args(cls: type, args: argparse.Namespace, **fixed: Any) -> Any:
    """An instance of ``cls`` from the parsed user fields (plus ``fixed`` values for the others)."""
    values = {f.name: getattr(args, f.name) for f in user_fields(cls) if hasattr(args, f.name)}
    return cls(**values, **fixed)


def defaults(cls: type) -> dict[str, Any]:
    """Default of every user field, by field name (what a page's widgets start at)."""
    return {f.name: default_of(f) for f in user_fields(cls)}


PRESETS = ("quick", "paper")  # quick preview; paper-sized (the defaults)


def preset_values(cls: type, preset: str) -> dict[str, Any]:
    """Every user field's value in ``preset``: "paper" is the defaults, "quick" each field's
    ``quick`` value where declared (else its default)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; one of {PRESETS}")
    return {
        f.name: f.metadata.get("quick", default_of(f)) if preset == "quick" else default_of(f) for f in user_fields(cls)
    }


def has_quick(cls: type) -> bool:
    """Whether any user field of ``cls`` declares a quick-preview value."""
    return any("quick" in f.metadata for f in user_fields(cls))


def help_of(cls: type, name: str) -> str:
    return next(f.metadata["help"] for f in user_fields(cls) if f.name == name)


def argv_for(cls: type, values: dict[str, Any]) -> list[str]:
    """Command-line tokens for the values that differ from their defaults (so a page that keeps
    every default produces the bare command, the same line a researcher would type)."""
    out: list[str] = []
    for f in user_fields(cls):
        value = values.get(f.name, default_of(f))
        if value == default_of(f):
            continue
        if isinstance(value, bool):
            out.append(flag_of(f) if value else "--no-" + flag_of(f)[2:])
        elif _shown(value).startswith("-"):  # "--flag -x" would read -x as an option
            out.append(f"{flag_of(f)}={_shown(value)}")
        else:
            out += [flag_of(f), _shown(value)]
    return out
