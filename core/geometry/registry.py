"""The analyses registry: a leaf that imports no analysis.

Each geometry module registers itself with ``register_analysis``; ``core.geometry.analyses``
imports them all. The CLI builds one subcommand per entry (its options generated from the
config dataclasses), the answer cache and the job runner key on the command line, and the Report
page lists every registered analysis, so adding an analysis touches its module, its page and its
figure builder (``core.present.figures.FIGURES``), nothing else.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any, Callable

from core.base.progress import Progress


@dataclass(frozen=True)
class Analysis:
    name: str  # the CLI subcommand and the Report page's section key
    title: str  # what a person reads (Report page headings)
    help: str  # one line for ``python -m core --help``
    configs: tuple[type, ...]  # config dataclasses whose ``option`` fields become CLI options and widgets
    command: Callable[[argparse.Namespace, Progress], dict[str, Any]]  # parsed options -> JSON answer
    set_files: tuple[str, ...] = ()  # data sets a ``--<set>-file`` option replaces


ANALYSES: dict[str, Analysis] = {}


def register_analysis(analysis: Analysis) -> Analysis:
    ANALYSES[analysis.name] = analysis
    return analysis
