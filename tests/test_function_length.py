"""No function in gateway/ is longer than a screen (80 lines, ``def`` to last line).

A long function hands off to smaller ones named for what they do (../shared/STYLE.md, 14).
The functions that were longer when this test was written are listed with their length;
each may shrink but not grow, and an entry must go once its function fits or is gone.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

GATEWAY = Path(__file__).resolve().parent.parent / "gateway"

MAX_LINES = 80

TOO_LONG: dict[str, int] = {}
"""Today's offenders (``file::qualified name``: lines), to be split, not to be added to."""


def _functions(tree: ast.AST, prefix: str = "") -> Iterator[tuple[str, int]]:
    """``(qualified name, lines)`` of every function and method, nested ones included."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            assert node.end_lineno is not None
            yield prefix + node.name, node.end_lineno - node.lineno + 1
            yield from _functions(node, f"{prefix}{node.name}.")
        elif isinstance(node, ast.ClassDef):
            yield from _functions(node, f"{prefix}{node.name}.")
        else:
            yield from _functions(node, prefix)


def function_lengths() -> dict[str, int]:
    """Lines of every function under gateway/, by ``file::qualified name``."""
    lengths: dict[str, int] = {}
    for path in sorted(GATEWAY.rglob("*.py")):
        name = path.relative_to(GATEWAY.parent).as_posix()
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for function, lines in _functions(tree):
            lengths[f"{name}::{function}"] = lines
    return lengths


def test_lengths_count_methods_and_nested_functions() -> None:
    code = "class A:\n    def m(self):\n        def inner():\n            pass\n        return 1\n"
    assert dict(_functions(ast.parse(code))) == {"A.m": 4, "A.m.inner": 2}


def test_no_function_is_longer_than_a_screen() -> None:
    long = {
        name: lines
        for name, lines in function_lengths().items()
        if lines > MAX_LINES and name not in TOO_LONG
    }
    assert long == {}, f"split these (or, with a reason, list them in TOO_LONG): {long}"


def test_a_listed_function_does_not_grow() -> None:
    lengths = function_lengths()
    grown = {
        name: (lengths[name], limit)
        for name, limit in TOO_LONG.items()
        if name in lengths and lengths[name] > limit
    }
    assert grown == {}, f"(now, listed): {grown}"


def test_every_listed_function_is_still_too_long() -> None:
    lengths = function_lengths()
    done = sorted(name for name in TOO_LONG if lengths.get(name, 0) <= MAX_LINES)
    assert done == [], f"remove from TOO_LONG, they fit now or are gone: {done}"
