"""Reading human-edited YAML with line numbers (policy bundles, the gateway config, simulator
scenarios), and turning errors into located problems.

:func:`read_yaml` composes the file into YAML nodes (each node knows its line) and builds
plain Python data from them, recording the line of every mapping key and sequence item by
its path (``("subscribers", 2, "view")``). :func:`validation_problems` then maps each
pydantic error location to the line of the deepest node that exists, so a missing field is
reported on the line of the mapping that lacks it.

The YAML dialect is YAML 1.1 as PyYAML reads it with two changes that matter in hand-edited
policy: only ``true``/``false`` are booleans (so ``NO`` is Norway, not false), and a key
given twice in one mapping is an error instead of silently keeping the last value.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from gateway.errors import Problem

__all__ = ["Loc", "Source", "format_path", "read_yaml", "validation_problems"]

Loc = tuple[str | int, ...]
"""A location inside a document: mapping keys and sequence indexes."""

_BOOL_TAG = "tag:yaml.org,2002:bool"


class _Loader(yaml.SafeLoader):
    """SafeLoader whose only booleans are true/false (YAML 1.2 core schema)."""


class _Composer(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """The same dialect, parsed by libyaml where PyYAML was built with it: several times
    faster, and fewer nodes' memory, than PyYAML's own composer (``bench/RESULTS.md``,
    peak RSS)."""


_RESOLVERS = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != _BOOL_TAG]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
for _loader in (_Loader, _Composer):
    _loader.yaml_implicit_resolvers = {k: list(v) for k, v in _RESOLVERS.items()}
    _loader.add_implicit_resolver(
        _BOOL_TAG, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
    )


@dataclass(frozen=True)
class Source:
    """A parsed file: its data and the line of every node, by path."""

    file: str
    data: Any
    lines: dict[Loc, int]

    def line(self, path: Sequence[str | int]) -> int | None:
        """Line (1-based) of the deepest node on ``path`` that exists in the file."""
        best = self.lines.get(())
        current: Loc = ()
        for part in path:
            candidate = (*current, part)
            if candidate in self.lines:
                current = candidate
                best = self.lines[candidate]
        return best

    def problem(self, path: Sequence[str | int], message: str) -> Problem:
        """A :class:`~gateway.errors.Problem` located at ``path`` in this file."""
        return Problem(self.file, self.line(path), format_path(path), message)


_PLAIN_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def format_path(path: Sequence[str | int]) -> str:
    """``subscribers[2].view.datum``; keys that are not plain names go in brackets:
    ``fields[Vehicle.Speed].coarsen``."""
    out = ""
    for part in path:
        if not isinstance(part, str):
            out += f"[{part}]"
        elif _PLAIN_KEY.match(part):
            out += f".{part}" if out else part
        else:
            out += f"[{part}]"
    return out


def read_yaml(path: Path, display: str) -> tuple[Source | None, list[Problem]]:
    """Parse one YAML file; on a syntax or encoding error return ``None`` and the problem.

    Problems found while building the data (duplicate keys, non-scalar keys) are returned
    together with the source; the data then holds the first value of a duplicated key.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        return None, [Problem(display, None, "", f"not UTF-8 text: {exc.reason}")]
    except OSError as exc:
        return None, [Problem(display, None, "", f"cannot read: {exc.strerror}")]
    try:
        node, by_libyaml = _compose(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        message = " ".join(str(part) for part in (exc.context, exc.problem) if part)
        return None, [Problem(display, line, "", f"YAML syntax error: {message}")]
    except yaml.YAMLError as exc:
        return None, [Problem(display, None, "", f"YAML error: {exc}")]
    if node is None:
        return Source(display, {}, {(): 1}), []
    builder = _Builder(display, check_text=not by_libyaml)
    try:
        data = builder.build(node, ())
    finally:
        builder.close()
    return Source(display, data, builder.lines), builder.problems


def _compose(text: str) -> tuple[yaml.Node | None, bool]:
    """The document's node tree, and whether libyaml parsed it. libyaml refuses a little
    valid YAML that PyYAML's own parser reads (a tab opening a block scalar, unknown
    directives) and words its errors less helpfully (it does not name a tab): where it
    fails, the pure-Python parser decides, and its error is the one reported. That parser
    lets escaped surrogates (``"\\ud83d"``) through as text that is not Unicode: the
    builder then reports them."""
    if _Composer is _Loader:
        return yaml.compose(text, Loader=_Loader), False
    try:
        return yaml.compose(text, Loader=_Composer), True
    except yaml.YAMLError:
        return yaml.compose(text, Loader=_Loader), False


class _Builder:
    def __init__(self, file: str, *, check_text: bool = False) -> None:
        self.file = file
        self._check_text = check_text  # strings may hold lone surrogates
        self.lines: dict[Loc, int] = {}
        self.problems: list[Problem] = []
        self._constructor = _Loader("")
        self._open: set[int] = set()  # collections being built: an alias cycle ends here

    def close(self) -> None:
        """Let the nodes go. The constructor keeps every node it constructed, and a loader
        refers to itself: left to the cycle collector, the nodes of a 10,000-consent file
        (300,000 objects) outlived the load whenever collection was paused."""
        self._constructor.constructed_objects.clear()
        self._constructor.dispose()

    def build(self, node: yaml.Node, path: Loc) -> Any:
        self.lines.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode | yaml.SequenceNode):
            if id(node) in self._open:
                self._problem(node, path, "an alias refers to a node that contains it")
                return None
            self._open.add(id(node))
            try:
                return self._collection(node, path)
            finally:
                self._open.discard(id(node))
        return self._scalar(node, path)

    def _collection(self, node: yaml.MappingNode | yaml.SequenceNode, path: Loc) -> Any:
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item, (*path, i)) for i, item in enumerate(node.value)]
        try:
            self._constructor.flatten_mapping(node)
        except yaml.YAMLError as exc:
            self._problem(node, path, f"cannot merge: {exc}")
            return None
        result: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key_line = key_node.start_mark.line + 1
            if not isinstance(key_node, yaml.ScalarNode):
                self.problems.append(
                    Problem(self.file, key_line, format_path(path), "a key must be a scalar")
                )
                continue
            problems = len(self.problems)
            key = self._scalar(key_node, path)
            if len(self.problems) > problems:
                continue  # reported; its value cannot be placed
            child = (*path, key)
            if key in result:
                self.problems.append(
                    Problem(
                        self.file,
                        key_line,
                        format_path(child),
                        f"duplicate key (first given on line {self.lines[child]})",
                    )
                )
                continue
            self.lines[child] = key_line
            result[key] = self.build(value_node, child)
        return result

    def _scalar(self, node: yaml.Node, path: Loc) -> Any:
        try:
            value = self._constructor.construct_object(node)
        except (yaml.YAMLError, ValueError, TypeError, AttributeError, OverflowError) as exc:
            # e.g. ``!!int xyz``, ``!!timestamp soon``, an unknown ``!tag``
            self._problem(node, path, f"cannot read this value: {exc}")
            return None
        if self._check_text and isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                self._problem(
                    node, path, "not Unicode text (an escaped surrogate): write the character"
                )
                return None
        return value

    def _problem(self, node: yaml.Node, path: Loc, message: str) -> None:
        self.problems.append(
            Problem(self.file, node.start_mark.line + 1, format_path(path), message)
        )


_MESSAGES = {
    "extra_forbidden": "unknown field",
    "missing": "required field missing",
    "timezone_aware": "needs a UTC offset, e.g. 2025-01-10T09:30:00+08:00",
    "model_type": "expected a mapping",
    "dict_type": "expected a mapping",
    "list_type": "expected a list",
    "tuple_type": "expected a list",
}


def validation_problems(source: Source, error: ValidationError) -> list[Problem]:
    """Every error of ``error`` as a problem located in ``source``, in file order."""
    problems = []
    for item in error.errors(include_url=False):
        loc = [part for part in item["loc"] if part != "[key]"]
        message = _MESSAGES.get(item["type"], item["msg"])
        message = message.removeprefix("Value error, ")
        problems.append(source.problem(loc, message))
    problems.sort(key=lambda p: p.line or 0)
    return problems
