"""The package's layout, read from the source with ``ast`` (no module is imported): imports have no
cycle, the three methods (cache, layers, depth) stand side by side without importing each other, and the
shared layer imports nothing above it.

Every import counts, including those inside functions. ``from pkg import name`` imports the module
``pkg.name`` when there is one, else ``pkg``. A package's ``__init__`` is a module of its own (named as the
package), and importing ``a.b.c`` from outside ``a.b`` runs ``a/b/__init__`` too, so that counts as an
import of ``a.b`` (the root package excepted: every module runs it first).
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
ROOT = "dipgo"
METHODS = ("cache", "layers", "depth")
SHARED = ("models", "errors", "fileio", "dist", "version", "malloc")
ABOVE_SHARED = (*METHODS, "evaluate", "zoo", "cli", "api", "__main__")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@functools.cache
def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted((SRC / ROOT).rglob("*.py"))}


def _imported(name: str, path: Path, node: ast.AST) -> list[str]:
    """The package modules one import statement of module ``name`` (at ``path``) names."""
    modules = _modules()
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if not isinstance(node, ast.ImportFrom):
        return []
    if node.level:
        package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        base = package[:len(package) - (node.level - 1)]
        base = ".".join(base + ([node.module] if node.module else []))
    else:
        base = node.module or ""
    return [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]


def _with_packages(importer: str, target: str) -> set[str]:
    """``target`` and the packages importing it runs, less the root and the importer's own packages."""
    modules, parts, out = _modules(), target.split("."), set()
    while parts and ".".join(parts) not in modules:  # ``import a.b.attr`` style: the longest module prefix
        parts.pop()
    for i in range(2, len(parts) + 1):
        prefix = ".".join(parts[:i])
        if i == len(parts) or not (importer == prefix or importer.startswith(prefix + ".")):
            out.add(prefix)
    return out


@functools.cache
def _graph() -> dict[str, frozenset[str]]:
    """module -> the package modules it imports."""
    graph = {}
    for name, path in _modules().items():
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            for target in _imported(name, path, node):
                if target == ROOT:
                    targets.add(ROOT)
                elif target.startswith(ROOT + "."):
                    targets |= _with_packages(name, target)
        graph[name] = frozenset(targets - {name})
    return graph


def _cycle(graph: dict[str, frozenset[str]]) -> list[str] | None:
    """One import cycle of ``graph`` as a path that ends where it starts, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        state[node] = 2
        path.pop()
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return None


def _part(module: str) -> str:
    """The top-level part of the package a module belongs to (the root package is ``""``)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_the_parser_sees_the_imports():
    graph = _graph()
    assert "dipgo.models.folders" in graph["dipgo.depth.io"]              # ``from ..models.folders import``
    assert "dipgo.models" in graph["dipgo.depth.io"]                       # its package runs first
    assert "dipgo.layers.pruning" in graph["dipgo.layers"]                 # a package's __init__ is a module
    assert "dipgo.zoo" in graph["dipgo.evaluate.bench"]                    # ``from .. import zoo``
    assert "dipgo.evaluate.bench" in graph["dipgo.cli"]                    # an import inside a function
    assert {"dipgo.api", "dipgo.version"} <= graph[ROOT]


def test_the_cycle_finder_finds_cycles():
    assert _cycle({"a": frozenset({"b"}), "b": frozenset({"c"}), "c": frozenset()}) is None
    assert _cycle({"a": frozenset({"b"}), "b": frozenset({"c"}), "c": frozenset({"a"})}) == ["a", "b", "c", "a"]


def test_no_import_cycle():
    cycle = _cycle(_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_methods_do_not_import_each_other():
    wrong = [(m, t) for m, targets in _graph().items() for t in targets
             if _part(m) in METHODS and _part(t) in METHODS and _part(t) != _part(m)]
    assert not wrong, f"a method imports another (move what both use to dipgo.models): {wrong}"


def test_shared_layer_imports_nothing_above_it():
    wrong = [(m, t) for m, targets in _graph().items() for t in targets
             if _part(m) in SHARED and (t == ROOT or _part(t) in ABOVE_SHARED)]
    assert not wrong, f"the shared layer imports a method, a user of the methods or the package root: {wrong}"
