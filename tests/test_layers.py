"""The layering of ``core/``, read from the source with ``ast`` (nothing is imported).

Dependencies run one way::

    core.base <- core.world <- core.geometry <- core.restoration (methods included)
              <- core.service <- core.cli / core.__main__

and ``core.present`` depends on ``core.base`` alone (only ``core.cli`` and ``core.__main__`` import
it). ``core.base`` imports nothing of ``core`` but itself; modules of one layer may import each other
as long as there is no cycle. An import inside a function body (a deliberate late import) says why
in a comment on its line, and nothing in ``core/`` imports streamlit (the dashboard's business).

Every import counts, at any depth: module level, inside functions and methods, under ``if``.
``from core.pkg import name`` is an import of the module ``core.pkg.name`` when that module exists,
else of ``core.pkg``. Implicit imports of parent packages (``import core.a.b`` runs
``core/a/__init__.py``) are not edges: every package ``__init__`` is checked through its own imports.
"""

from __future__ import annotations

import ast
import io
import tokenize
from dataclasses import dataclass
from pathlib import Path

import pytest

CORE = Path(__file__).resolve().parents[1] / "core"

# Rank of each layer, bottom first; a module may import modules of its own rank or below.
RANKS = {
    "core": -1,  # the (empty) package root
    "core.base": 0,
    "core.world": 1,
    "core.geometry": 2,
    "core.restoration": 3,
    "core.service": 4,
    "core.cli": 5,
    "core.__main__": 5,
}
PRESENT = "core.present"  # beside the chain: depends on core.base alone
PRESENT_IMPORTERS = ("core.cli", "core.__main__")
BASE = "core.base"


# ---------------------------------------------------------------------------- reading the source
@dataclass(frozen=True)
class Import:
    """One imported name: ``target`` is the absolute dotted module (``core.*`` resolved against the
    modules that exist), ``lines`` the statement's first and last line, ``in_function`` whether
    the statement sits inside a function or method body."""

    target: str
    lines: tuple[int, int]
    in_function: bool


def module_name(path: Path, root: Path = CORE) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def core_sources(root: Path = CORE) -> dict[str, tuple[Path, str]]:
    """Every module under ``core/``: dotted name -> (path, source)."""
    return {module_name(p, root): (p, p.read_text(encoding="utf-8")) for p in sorted(root.rglob("*.py"))}


def _resolve(name: str, known: set[str]) -> str:
    """The longest prefix of ``name`` that is a known module (``name`` itself if none is)."""
    parts = name.split(".")
    for n in range(len(parts), 0, -1):
        candidate = ".".join(parts[:n])
        if candidate in known:
            return candidate
    return name


def imports_of(module: str, source: str, is_package: bool, known: set[str]) -> list[Import]:
    """Every import in ``source`` (the module ``module``), at any depth, as absolute targets."""
    tree = ast.parse(source)
    out: list[Import] = []

    def walk(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                walk(child, True)
                continue
            lines = (getattr(child, "lineno", 0), getattr(child, "end_lineno", 0) or getattr(child, "lineno", 0))
            if isinstance(child, ast.Import):
                for alias in child.names:
                    out.append(Import(_resolve(alias.name, known), lines, in_function))
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    package = module.split(".") if is_package else module.split(".")[:-1]
                    package = package[: len(package) - (child.level - 1)]
                    base = ".".join(package + ([child.module] if child.module else []))
                else:
                    base = child.module or ""
                for alias in child.names:
                    full = f"{base}.{alias.name}"
                    target = full if alias.name != "*" and full in known else _resolve(base, known)
                    out.append(Import(target, lines, in_function))
            walk(child, in_function)

    walk(tree, False)
    return out


def import_graph(sources: dict[str, tuple[Path, str]]) -> dict[str, set[str]]:
    """Module -> the ``core`` modules it imports (self-imports dropped)."""
    known = set(sources)
    graph: dict[str, set[str]] = {}
    for name, (path, source) in sources.items():
        targets = {i.target for i in imports_of(name, source, path.name == "__init__.py", known)}
        graph[name] = {t for t in targets if (t == "core" or t.startswith("core.")) and t != name}
    return graph


def comment_lines(source: str) -> dict[int, str]:
    """Line number -> text of the comment on it (real comments only, not ``#`` inside strings)."""
    out: dict[int, str] = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            out[tok.start[0]] = tok.string
    return out


def _explains(comment: str) -> bool:
    """A comment that says something: not only a lint directive (``# noqa: E402``, ``# type: ignore``)."""
    text = comment.lstrip("#").strip()
    for directive in ("noqa", "type: ignore", "pragma", "pylint:", "isort:"):
        if text.lower().startswith(directive):
            # what follows the directive's own codes, e.g. "# noqa: E402  (the engine loads late)"
            rest = text.split("  ", 1)[1] if "  " in text else ""
            text = rest.strip()
    return sum(ch.isalpha() for ch in text) >= 3


def uncommented_function_imports(module: str, source: str, known: set[str] = frozenset()) -> list[str]:
    """``module:line: code`` for each import inside a function body with no explaining comment on
    (one of) the statement's lines."""
    comments = comment_lines(source)
    lines = source.splitlines()
    out = []
    seen = set()
    for imp in imports_of(module, source, False, set(known)):
        first, last = imp.lines
        if not imp.in_function or first in seen:
            continue
        seen.add(first)
        if not any(_explains(comments.get(n, "")) for n in range(first, last + 1)):
            out.append(f"{module}:{first}: {lines[first - 1].strip()}")
    return out


# ---------------------------------------------------------------------------- the rules
def layer_of(module: str) -> str | None:
    """The layer key of a ``core`` module (``PRESENT`` or a key of ``RANKS``); None if it has none."""
    if module == PRESENT or module.startswith(PRESENT + "."):
        return PRESENT
    for key in sorted(RANKS, key=len, reverse=True):
        if key != "core" and (module == key or module.startswith(key + ".")):
            return key
    return "core" if module == "core" else None


def allowed(importer: str, imported: str) -> bool:
    a, b = layer_of(importer), layer_of(imported)
    if a is None or b is None:
        return False
    if a == BASE:
        return b == BASE
    if a == PRESENT:
        return b in (PRESENT, BASE)
    if b == PRESENT:
        return a == PRESENT or a in PRESENT_IMPORTERS
    if a == "core":
        return False  # the package root imports nothing of core
    return RANKS[b] <= RANKS[a]


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    """``importer -> imported`` for every edge against the layer order (or touching a module in no layer)."""
    return sorted(f"{a} -> {b}" for a, targets in graph.items() for b in targets if not allowed(a, b))


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (``[m1, m2, ..., m1]``) per strongly connected component that has one (Tarjan)."""
    nodes = set(graph) | {t for ts in graph.values() for t in ts}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []
    counter = [0]

    def strongconnect(v: str) -> None:
        # iterative Tarjan (a deep recursion would be fine here, but stay safe)
        work = [(v, iter(sorted(graph.get(v, ()))))]
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        while work:
            node, children = work[-1]
            advanced = False
            for w in children:
                if w not in index:
                    index[w] = low[w] = counter[0]
                    counter[0] += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph.get(w, ())))))
                    advanced = True
                    break
                if w in on_stack:
                    low[node] = min(low[node], index[w])
            if advanced:
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                comp = set()
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.add(w)
                    if w == node:
                        break
                components.append(comp)

    for v in sorted(nodes):
        if v not in index:
            strongconnect(v)

    cycles = []
    for comp in components:
        if len(comp) == 1:
            (v,) = comp
            if v in graph.get(v, ()):
                cycles.append([v, v])
            continue
        cycles.append(_cycle_in(graph, comp))
    return sorted(cycles)


def _cycle_in(graph: dict[str, set[str]], comp: set[str]) -> list[str]:
    """A concrete cycle through the smallest module of a strongly connected component (BFS back to it)."""
    start = min(comp)
    parent: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph.get(v, ())):
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(parent[path[-1]])
                    return [start, *reversed(path[:-1]), start] if len(path) > 1 else [start, v, start]
                if w in comp and w not in parent:
                    parent[w] = v
                    nxt.append(w)
        frontier = nxt
    return sorted(comp)  # unreachable for a real component


def streamlit_imports(sources: dict[str, tuple[Path, str]]) -> list[str]:
    out = []
    for name, (path, source) in sources.items():
        for imp in imports_of(name, source, path.name == "__init__.py", set(sources)):
            if imp.target == "streamlit" or imp.target.startswith("streamlit."):
                out.append(f"{name}:{imp.lines[0]}: {imp.target}")
    return out


# ---------------------------------------------------------------------------- the tests
@pytest.fixture(scope="module")
def sources() -> dict[str, tuple[Path, str]]:
    found = core_sources()
    assert "core.base.options" in found and "core.restoration.methods.curvature" in found, sorted(found)
    return found


@pytest.fixture(scope="module")
def graph(sources) -> dict[str, set[str]]:
    return import_graph(sources)


def test_the_graph_sees_imports_at_every_depth(graph):
    """The reader finds what is known to be there: a late import inside a function (jobs.run) and
    ``from pkg import module`` naming modules (methods/__init__)."""
    assert "core.service.commands" in graph["core.service.jobs"]
    methods = {"core.restoration.methods.curvature", "core.restoration.methods.direction"}
    assert methods <= graph["core.restoration.methods"]
    assert "core.restoration.methods" in graph["core.restoration.runner"]


def test_every_module_belongs_to_a_layer(sources):
    orphans = [m for m in sources if layer_of(m) is None]
    assert not orphans, f"modules in no layer (add them to a layer package): {orphans}"


def test_no_import_cycle(graph):
    cycles = find_cycles(graph)
    assert not cycles, "import cycles in core/:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_every_import_respects_the_layer_order(graph):
    bad = layer_violations(graph)
    assert not bad, "imports against the layer order (importer -> imported):\n" + "\n".join(bad)


def test_imports_inside_functions_say_why(sources):
    known = set(sources)
    bad = [line for name, (_, source) in sources.items() for line in uncommented_function_imports(name, source, known)]
    assert not bad, "imports inside a function body without a comment on the same line saying why:\n" + "\n".join(bad)


def test_core_never_imports_streamlit(sources):
    bad = streamlit_imports(sources)
    assert not bad, "core/ imports streamlit (only pages/ and app.py may):\n" + "\n".join(bad)


# ---------------------------------------------------------------------------- the checkers can fail
def test_checkers_report_a_fake_cycle_and_upward_import():
    fake = {
        "core.base.cache": {"core.world.models"},  # upward: base imports world
        "core.world.models": {"core.world.data"},
        "core.world.data": {"core.world.models"},  # cycle inside one layer
        "core.restoration.runner": {"core.present.text", "core.world.data"},  # present from below cli
        "core.present.text": {"core.base.errors"},
        "core.cli": {"core.present.text", "core.service.commands"},
        "core.service.commands": {"core.restoration.runner"},
    }
    assert find_cycles(fake) == [["core.world.data", "core.world.models", "core.world.data"]]
    assert layer_violations(fake) == [
        "core.base.cache -> core.world.models",
        "core.restoration.runner -> core.present.text",
    ]
    longer = {"core.world.a": {"core.world.b"}, "core.world.b": {"core.world.c"}, "core.world.c": {"core.world.a"}}
    assert find_cycles(longer) == [["core.world.a", "core.world.b", "core.world.c", "core.world.a"]]
    assert find_cycles({"core.world.a": {"core.world.b"}, "core.world.b": set()}) == []
    assert not allowed("core.present.figures", "core.world.models")
    assert allowed("core.present.figures", "core.base.paths")
    assert not allowed("core.base.cache", "core") and layer_of("core.newthing") is None


def test_reader_finds_nested_relative_and_uncommented_imports():
    source = (
        "import os\n"
        "from . import sibling\n"
        "from ..base import errors\n"
        "def f():\n"
        "    import core.world.models\n"
        "    from core.service import commands  # the job process alone loads the engine\n"
        "    x = '# not a comment'; import json\n"
        "    from core.geometry import (  # noqa: F401\n"
        "        basin,\n"
        "    )\n"
        "class C:\n"
        "    def m(self):\n"
        "        if True:\n"
        "            import streamlit as st\n"
    )
    known = {
        "core.world.sibling",
        "core.base",
        "core.base.errors",
        "core.world.models",
        "core.service.commands",
        "core.geometry.basin",
    }
    found = imports_of("core.world.x", source, False, known)
    assert [(i.target, i.in_function) for i in found] == [
        ("os", False),
        ("core.world.sibling", False),
        ("core.base.errors", False),
        ("core.world.models", True),
        ("core.service.commands", True),
        ("json", True),
        ("core.geometry.basin", True),
        ("streamlit", True),
    ]
    bad = uncommented_function_imports("core.world.x", source, known)
    assert [b.split(":")[1] for b in bad] == ["5", "7", "8", "14"]
    sources = {"core.world.x": (Path("x.py"), source)}
    assert streamlit_imports(sources) == ["core.world.x:14: streamlit"]
