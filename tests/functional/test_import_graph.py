"""The package's import graph: no cycle inside a room, no import pointing upward.

Read from the source with :mod:`ast`, not by importing: every ``import`` / ``from ...
import`` of a ``dse_monitor`` module, wherever it stands. Imports inside a function
(lazy imports) count too: a lazy import is still a dependency, and it is how the cycle
``functional/_checks.py`` <-> ``functional/kernel.py`` used to hide. Imports under
``if TYPE_CHECKING:`` are left out (they never run).

Rooms, lowest first: functional < capture < registry (the metric registry, read by the
monitor) < monitor < top (loss, callbacks, the package face) < train. A module may import
its own room and the rooms below it. The package face ``dse_monitor/__init__.py``
re-exports the rooms; it may reach ``train`` only lazily, inside its module
``__getattr__`` (issue 21).
"""
from __future__ import annotations

import ast
from functools import lru_cache
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "dse_monitor"

#: Rank of each room; a module may import modules of equal or lower rank.
RANKS = {"functional": 0, "capture": 1, "registry": 2, "monitor": 3, "top": 4, "train": 5}

#: Import edges known to break the rules, left for the rooms' owners to remove (issue 21).
#: Each entry is ``(importer, imported)``; the tests fail on any edge not listed here, and
#: on an entry that no longer exists (so the list only shrinks). The functional room has none.
KNOWN_CYCLE_EDGES: set[tuple[str, str]] = set()
KNOWN_UPWARD_EDGES: set[tuple[str, str]] = set()


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _room(module: str) -> str:
    parts = module.split(".")
    if module == "dse_monitor.__main__":  # the `dse-monitor` command: the main job's entry, imported by nobody
        return "train"
    return parts[1] if len(parts) >= 2 and parts[1] in RANKS else "top"  # the registry package is its own room


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(path: Path, modules: set[str]) -> dict[str, bool]:
    """``{imported dse_monitor module: lazy}`` for one file (lazy: only inside a function)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: dict[str, bool] = {}

    def resolve(target: str) -> str | None:
        while target and target not in modules:  # `from .kernel import x` names a module; `x` may not be one
            target = target.rpartition(".")[0]
        return target or None

    def visit(node: ast.AST, lazy: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for other in child.orelse:
                    visit(other, lazy)
                continue
            targets: list[str] = []
            if isinstance(child, ast.Import):
                targets = [a.name for a in child.names]
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package.split(".")
                    base = base[: len(base) - (child.level - 1)]
                    stem = ".".join(base + ([child.module] if child.module else []))
                else:
                    stem = child.module or ""
                targets = [f"{stem}.{a.name}" for a in child.names] + [stem]
            for target in targets:
                if target.startswith("dse_monitor"):
                    mod = resolve(target)
                    if mod and mod != name:
                        found[mod] = found.get(mod, True) and lazy
            inner = lazy or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            visit(child, inner)

    visit(ast.parse(path.read_text(), str(path)), False)
    # `from .a import b` also names the package `a` belongs to; a package's own __init__ is no edge
    return {m: lazy for m, lazy in found.items() if not name.startswith(m + ".")}


@lru_cache(maxsize=1)
def import_graph() -> dict[str, dict[str, bool]]:
    """``{module: {imported module: lazy}}`` over every module of the package."""
    files = sorted(PACKAGE.rglob("*.py"))
    modules = {_module_name(p) for p in files}
    return {_module_name(p): _imports(p, modules) for p in files}


def _edges_in_cycles(graph: dict[str, dict[str, bool]]) -> set[tuple[str, str]]:
    """Edges between modules of one room that lie on a cycle within that room (Tarjan's SCCs)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    component: dict[str, int] = {}

    def same_room(a: str, b: str) -> bool:
        return _room(a) == _room(b)

    def strongconnect(v: str) -> None:  # recursion depth is bounded by the package's size
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if not same_room(v, w) or w not in graph:
                continue
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component[w] = index[v]
                if w == v:
                    break

    for v in graph:
        if v not in index:
            strongconnect(v)
    return {(a, b) for a in graph for b in graph[a] if same_room(a, b) and b in graph and component[a] == component[b]}


def _upward_edges(graph: dict[str, dict[str, bool]]) -> set[tuple[str, str]]:
    out = set()
    for a, targets in graph.items():
        for b, lazy in targets.items():
            if RANKS[_room(b)] <= RANKS[_room(a)]:
                continue
            if a == "dse_monitor" and lazy:  # the package face's lazy __getattr__ (checked below)
                continue
            out.add((a, b))
    return out


def test_the_graph_sees_lazy_and_relative_imports():
    graph = import_graph()
    assert graph["dse_monitor.functional.entropy"]["dse_monitor.functional.kernel"] is False
    assert graph["dse_monitor"]["dse_monitor.callback"] is True  # inside __getattr__
    assert "dse_monitor.functional" in graph["dse_monitor"]  # `from .functional import *`


def test_the_checks_find_a_cycle_and_an_upward_import():
    graph = {
        "dse_monitor.functional.a": {"dse_monitor.functional.b": False},
        "dse_monitor.functional.b": {"dse_monitor.functional.a": True, "dse_monitor.monitor.c": True},
        "dse_monitor.monitor.c": {"dse_monitor.functional.a": False},
    }
    assert _edges_in_cycles(graph) == {("dse_monitor.functional.a", "dse_monitor.functional.b"),
                                       ("dse_monitor.functional.b", "dse_monitor.functional.a")}
    assert _upward_edges(graph) == {("dse_monitor.functional.b", "dse_monitor.monitor.c")}


def _assert_only_known(found: set, known: set, room: str, problem: str, list_name: str) -> None:
    found = {e for e in found if _room(e[0]) == room}
    known = {e for e in known if _room(e[0]) == room}
    assert found - known == set(), f"{problem} in {room}/: {sorted(found - known)}"
    assert known - found == set(), f"gone from {room}/, drop them from {list_name}: {sorted(known - found)}"


@pytest.mark.parametrize("room", list(RANKS))
def test_no_import_cycle_inside_a_room(room):
    _assert_only_known(_edges_in_cycles(import_graph()), KNOWN_CYCLE_EDGES, room, "import cycles", "KNOWN_CYCLE_EDGES")


@pytest.mark.parametrize("room", list(RANKS))
def test_no_import_points_upward(room):
    _assert_only_known(_upward_edges(import_graph()), KNOWN_UPWARD_EDGES, room, "imports of a higher room",
                       "KNOWN_UPWARD_EDGES")


def test_the_package_face_reaches_train_only_in_its_getattr():
    tree = ast.parse((PACKAGE / "__init__.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("train"):
            assert any(
                isinstance(f, ast.FunctionDef) and f.name == "__getattr__" and node in ast.walk(f) for f in tree.body
            ), f"dse_monitor/__init__.py imports train outside __getattr__ (line {node.lineno})"


def test_the_functional_core_imports_no_lightning():
    for path in (PACKAGE / "functional").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            for n in names:
                assert n.split(".")[0] not in ("lightning", "pytorch_lightning"), f"{path.name} imports {n}"
