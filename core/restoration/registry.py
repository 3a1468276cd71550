"""The restoration-method registry: a leaf that imports no method.

Each method module registers itself with ``@register`` (as peft's ``register_peft_method`` does);
``core.restoration.methods`` imports every method module, so importing that package fills
``METHODS``. A method is a config dataclass plus ``run(ctx, config) -> RestoreOutput``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, Callable

import numpy as np

from core.base.errors import InputError


@dataclass
class RestoreOutput:
    """A method's result: the restored model (a PeftModel for ``kind="adapter"``, a plain model
    for ``kind="model"``), notes for the record, and optional trajectory snapshots (steps x P)."""

    model: Any
    kind: str
    notes: dict = field(default_factory=dict)
    trajectory: np.ndarray | None = None


@dataclass(frozen=True)
class Method:
    name: str
    config: type
    run: Callable[[Any, Any], RestoreOutput]  # run(RestoreContext, config) -> RestoreOutput
    needs_adapter: bool
    summary: str


METHODS: dict[str, Method] = {}


def register(name: str, config: type, needs_adapter: bool, summary: str) -> Callable:
    """Decorator: add a ``run(ctx, config) -> RestoreOutput`` function to the registry."""

    def wrap(fn: Callable) -> Callable:
        METHODS[name] = Method(name, config, fn, needs_adapter, summary)
        return fn

    return wrap


def method(name: str) -> Method:
    """The registered method ``name``; an unknown name lists the valid ones."""
    if name not in METHODS:
        raise InputError(f"Unknown restoration method '{name}'.", f"use one of: {', '.join(METHODS)}.")
    return METHODS[name]


def settable(config: Any) -> dict[str, Any]:
    """The fields of a method config a user may set (nested configs are fixed recipes)."""
    return {f.name: getattr(config, f.name) for f in fields(config) if not is_dataclass(getattr(config, f.name))}


def preset_params(m: Method, preset: str) -> dict[str, Any]:
    """The method's settable values in ``preset`` ("paper": its defaults; "quick": each field's
    quick-preview value where its config declares one, ``core.base.options``)."""
    quick = {f.name: f.metadata["quick"] for f in fields(m.config) if "quick" in f.metadata}
    return {name: quick.get(name, v) if preset == "quick" else v for name, v in settable(m.config()).items()}


def param_tokens(m: Method, values: dict[str, Any]) -> list[str]:
    """``--param KEY=VALUE`` for every value that differs from the method's default, in field order
    (defaults stay implicit, so equal runs share one job and one answer)."""
    out = []
    for name, default in settable(m.config()).items():
        value = values.get(name, default)
        if value != default:
            text = ",".join(map(str, value)) if isinstance(value, tuple) else str(value)
            out += ["--param", f"{name}={text}"]
    return out


def parse_config(m: Method, overrides: dict[str, str]) -> Any:
    """The method's config dataclass with ``key=value`` overrides converted to the field types."""
    current = settable(m.config())
    values = {}
    for key, raw in overrides.items():
        name = key.replace("-", "_")
        if name not in current:
            raise InputError(
                f"Method '{m.name}' has no parameter '{key}' settable here.", f"use one of: {', '.join(current)}."
            )
        values[name] = _convert(key, raw, current[name])
        _check_bounds(m, key, raw, values[name], current[name])
    return m.config(**values)


def _check_bounds(m: Method, key: str, raw: str, value: Any, default: Any) -> None:
    """Numbers must be finite, within the field's declared ``low``/``high`` (``option`` metadata)
    where it has them, and not negative where the default is not (a count, rate or radius)."""
    meta = next((f.metadata for f in fields(m.config) if f.name == key.replace("-", "_")), {})
    items = value if isinstance(value, tuple) else (value,)
    defaults = default if isinstance(default, tuple) else (default,)
    floor = 0 if all(isinstance(d, (int, float)) and not isinstance(d, bool) and d >= 0 for d in defaults) else None
    low = meta.get("low") if meta.get("low") is not None else floor
    high = meta.get("high")
    for v in items:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        if not math.isfinite(v) or (low is not None and v < low) or (high is not None and v > high):
            bounds = f"[{low if low is not None else '-inf'}, {high if high is not None else 'inf'}]"
            raise InputError(
                f"Parameter {key}={raw!r} of method '{m.name}' is not a finite number in {bounds}.",
                f"pass a value in {bounds} (default {default}).",
            )


def _convert(key: str, raw: str, default: Any) -> Any:
    kind = type(default)
    try:
        if kind is bool:
            return raw.lower() in ("1", "true", "yes")
        if kind is tuple:
            item = type(default[0]) if default else str
            return tuple(item(x.strip()) for x in raw.split(","))
        return kind(raw)
    except ValueError:
        raise InputError(
            f"Parameter {key}={raw!r} is not a {kind.__name__}.", f"pass a {kind.__name__} value."
        ) from None
