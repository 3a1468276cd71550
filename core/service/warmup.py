"""The warm-up: every geometry analysis of the default demo world at its quick-preview preset,
then a quick curvature-aware restoration run, computed once in the background so each analysis
page and the Restoration page open on a finished figure.

Each analysis runs through ``core.service.commands.execute`` with the very command line its page
builds for the quick preset on the default pair (``planned``), so its answer lands in the answer
cache under the key the page looks up (``core.service.answer_cache.answer_key``); an analysis
already answered there is skipped. The warm-up takes no options (no world, no model, no file),
so it never computes anything a URL chose.
"""

from __future__ import annotations

import argparse
import time
from typing import Any, Callable

from core.base.errors import Cancelled
from core.base.options import argv_for, preset_values
from core.base.progress import Progress
from core.restoration.registry import method as get_method
from core.restoration.registry import param_tokens, preset_params
from core.service import answer_cache

ARGV = ["warmup"]  # the warm-up's own command line (what Home submits)
ORDER = ("correlate", "curvature", "landscape", "basin")  # shortest first: the first figure comes soonest
RESTORE_METHOD = "curvature"  # the Restoration page's first method; its quick run comes last (the longest)


def quick_argv(name: str) -> list[str]:
    """The command line of analysis ``name`` at the quick preset on the default pair: the one its
    page builds (defaults stay implicit, so the pair adds no tokens)."""
    import core.geometry.analyses  # noqa: F401  (registers every analysis)
    from core.geometry.registry import ANALYSES  # importing the analyses imports torch: only when asked

    tokens = [t for config in ANALYSES[name].configs for t in argv_for(config, preset_values(config, "quick"))]
    return [name, *tokens]


def quick_restore_argv(method: str = RESTORE_METHOD) -> list[str]:
    """The restore command line the Restoration page builds for ``method`` at the quick preset on
    the default pair (``param_tokens``: the page's own tokens, so both share one answer)."""
    import core.restoration.methods  # noqa: F401  (registers every method; imports torch: only when asked)

    m = get_method(method)
    return ["restore", "--method", m.name, *param_tokens(m, preset_params(m, "quick"))]


def planned() -> list[list[str]]:
    """The warm-up's command lines, in the order it runs them."""
    return [*(quick_argv(name) for name in ORDER), quick_restore_argv()]


def cmd_warmup(args: argparse.Namespace, progress: Progress, execute: Callable) -> dict[str, Any]:
    """Run each planned analysis not yet in the answer cache through ``execute`` (the command
    table's, passed in by it: this module does not import the table that registers it); one
    fraction over all of them, the current one named. The first update carries the plan (a page
    finds its place in it); a failed analysis is reported and the rest still run; cancelling stops
    at the current one's next step."""
    plan = planned()
    progress.update(0.0, "warm-up: starting", partial={"plan": plan})
    out: dict[str, Any] = {}
    for i, argv in enumerate(plan):
        name, stage = argv[0], progress.stage(i / len(plan), (i + 1) / len(plan))
        stage.update(0.0, f"{name} ({i + 1} of {len(plan)})", partial={"current": i, "name": name})
        if answer_cache.lookup(answer_cache.answer_key(argv)) is not None:
            out[name] = {"status": "cached", "argv": argv}
            continue
        started = time.monotonic()
        try:
            execute(argv, _named(stage, f"{name} ({i + 1} of {len(plan)})"), progress.cancel)
        except Cancelled:
            raise
        except Exception as err:  # one analysis failing leaves the others' previews
            out[name] = {"status": "failed", "argv": argv, "error": str(err).splitlines()[0] if str(err) else repr(err)}
            continue
        out[name] = {"status": "computed", "argv": argv, "seconds": round(time.monotonic() - started, 1)}
    progress.update(1.0, "warm-up done")
    return {"analyses": out}


def _named(stage: Progress, prefix: str):
    """A callback that reports an analysis's own progress on its slice of the warm-up's bar,
    its message prefixed with the analysis's name and place."""

    def callback(event) -> None:
        stage.update(event.fraction, f"{prefix}: {event.message}")

    return callback
