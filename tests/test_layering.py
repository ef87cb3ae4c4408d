"""The packages of gateway/ import each other without a cycle.

Each subpackage (``gateway/audit/``) and each top-level module (``gateway/keys.py``) is one
node; every import in every module under gateway/ is an edge, including imports inside
functions and under ``TYPE_CHECKING`` (a cycle deferred to call time is still a cycle for the
reader). The package root (``gateway/__init__.py``, the public API) is the node ``gateway``.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

GATEWAY = Path(__file__).resolve().parent.parent / "gateway"

Edge = tuple[str, str]

KNOWN_EDGES: dict[Edge, str] = {}
"""Edges left out of the cycle check, each of which must still exist."""


def _module_name(path: Path) -> str:
    parts = path.relative_to(GATEWAY.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _node(module: str) -> str | None:
    """The node a dotted module name belongs to; None outside gateway."""
    parts = module.split(".")
    if parts[0] != "gateway":
        return None
    return parts[1] if len(parts) > 1 else "gateway"


def _imported(path: Path, tree: ast.AST) -> Iterator[tuple[str, int]]:
    """Every module ``path`` imports, absolute, with its line."""
    here = _module_name(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            # `from gateway import consents` imports the module gateway.consents.
            for alias in node.names:
                submodule = f"{module}.{alias.name}"
                yield (submodule if _is_module(submodule) else module), node.lineno


def _is_module(module: str) -> bool:
    path = GATEWAY.parent.joinpath(*module.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def import_graph() -> dict[Edge, list[str]]:
    """Edges between nodes, each with the ``file:line`` of the imports that make it."""
    edges: dict[Edge, list[str]] = {}
    for path in sorted(GATEWAY.rglob("*.py")):
        source = _node(_module_name(path))
        assert source is not None
        for module, line in _imported(path, ast.parse(path.read_text(encoding="utf-8"))):
            target = _node(module)
            if target is not None and target != source:
                where = f"{path.relative_to(GATEWAY.parent)}:{line}"
                edges.setdefault((source, target), []).append(where)
    return edges


def cycles(edges: set[Edge]) -> list[list[str]]:
    """The strongly connected components of more than one node (Tarjan), sorted."""
    graph: dict[str, list[str]] = {}
    for a, b in sorted(edges):
        graph.setdefault(a, []).append(b)
        graph.setdefault(b, [])
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


def test_the_cycle_finder_finds_a_cycle_and_only_a_cycle() -> None:
    assert cycles({("a", "b"), ("b", "c"), ("c", "a"), ("c", "d")}) == [["a", "b", "c"]]
    assert cycles({("a", "b"), ("b", "c"), ("a", "c")}) == []


def test_function_level_and_relative_imports_are_edges() -> None:
    code = "def f():\n    from gateway.audit import log\n    from .. import keys\n"
    path = GATEWAY / "audit" / "example.py"
    modules = {m for m, _ in _imported(path, ast.parse(code))}
    assert modules == {"gateway.audit.log", "gateway.keys"}


def test_no_import_cycle_between_packages() -> None:
    edges = import_graph()
    found = cycles(set(edges) - set(KNOWN_EDGES))
    detail = [
        f"{' <-> '.join(component)}: "
        + "; ".join(
            f"{a} -> {b} ({edges[a, b][0]})"
            for a in component
            for b in component
            if (a, b) in edges and (a, b) not in KNOWN_EDGES
        )
        for component in found
    ]
    assert found == [], "\n".join(detail)


def test_every_known_edge_still_exists() -> None:
    edges = import_graph()
    gone = [edge for edge in KNOWN_EDGES if edge not in edges]
    assert gone == [], f"remove {gone} from KNOWN_EDGES: the import is gone"


def test_only_the_entry_point_imports_the_cli() -> None:
    """The CLI (gateway/cli/) drives the gateway and may import any of it; nothing in the
    gateway depends on its commands, so only ``python -m gateway`` imports it."""
    importers = sorted(a for a, b in import_graph() if b == "cli")
    assert importers == ["__main__"]
