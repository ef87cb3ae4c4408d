"""YAML with line numbers: every node located, pydantic errors mapped to file:line: field."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import BaseModel, ConfigDict, ValidationError

from gateway.errors import Problem
from gateway.policy.source import format_path, read_yaml, validation_problems


class _Inner(BaseModel):
    model_config = ConfigDict(extra="forbid")
    size: int
    name: str = ""


class _Doc(BaseModel):
    model_config = ConfigDict(extra="forbid")
    items: list[_Inner]
    table: dict[str, _Inner] = {}


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "doc.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_lines_of_keys_and_items(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "# comment\nitems:\n  - size: 1\n    name: a\n  - size: 2\ntable:\n  Vehicle.Speed:\n"
        "    size: 3\n",
    )
    source, problems = read_yaml(path, "doc.yaml")
    assert problems == []
    assert source is not None
    assert source.data == {
        "items": [{"size": 1, "name": "a"}, {"size": 2}],
        "table": {"Vehicle.Speed": {"size": 3}},
    }
    assert source.line(("items",)) == 2
    assert source.line(("items", 0)) == 3
    assert source.line(("items", 0, "name")) == 4
    assert source.line(("items", 1, "size")) == 5
    assert source.line(("table", "Vehicle.Speed", "size")) == 8
    # A path that does not exist falls back to the deepest node that does.
    assert source.line(("items", 1, "missing", 7)) == 5


def test_pydantic_errors_become_located_problems(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "items:\n  - size: one\n  - name: b\n    colour: red\ntable:\n  Vehicle.Speed:\n"
        "    size: 1.5\n",
    )
    source, _ = read_yaml(path, "doc.yaml")
    assert source is not None
    with pytest.raises(ValidationError) as info:
        _Doc.model_validate(source.data)
    got = [str(p) for p in validation_problems(source, info.value)]
    assert got == [
        "doc.yaml:2: items[0].size: Input should be a valid integer, unable to parse string "
        "as an integer",
        "doc.yaml:3: items[1].size: required field missing",
        "doc.yaml:4: items[1].colour: unknown field",
        "doc.yaml:7: table[Vehicle.Speed].size: Input should be a valid integer, got a number "
        "with a fractional part",
    ]


def test_duplicate_key_is_a_problem_and_first_value_kept(tmp_path: Path) -> None:
    path = _write(tmp_path, "a: 1\nb:\n  c: 2\n  c: 3\n")
    source, problems = read_yaml(path, "doc.yaml")
    assert source is not None
    assert source.data == {"a": 1, "b": {"c": 2}}
    assert problems == [Problem("doc.yaml", 4, "b.c", "duplicate key (first given on line 3)")]


def test_only_true_and_false_are_booleans(tmp_path: Path) -> None:
    path = _write(tmp_path, "a: NO\nb: yes\nc: off\nd: true\ne: False\n")
    source, _ = read_yaml(path, "doc.yaml")
    assert source is not None
    assert source.data == {"a": "NO", "b": "yes", "c": "off", "d": True, "e": False}


def test_syntax_error_names_the_line(tmp_path: Path) -> None:
    path = _write(tmp_path, "a: 1\nb: [1, 2\nc: 3\n")
    source, problems = read_yaml(path, "doc.yaml")
    assert source is None
    assert len(problems) == 1
    assert problems[0].file == "doc.yaml"
    assert problems[0].line == 3
    assert problems[0].message.startswith("YAML syntax error:")


def test_empty_file_is_an_empty_mapping(tmp_path: Path) -> None:
    source, problems = read_yaml(_write(tmp_path, "# nothing\n"), "doc.yaml")
    assert problems == []
    assert source is not None
    assert source.data == {}
    assert source.line(("anything",)) == 1


def test_unreadable_and_non_utf8(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_bytes(b"a: \xff\xfe\n")
    source, problems = read_yaml(path, "bad.yaml")
    assert source is None
    assert problems[0].message.startswith("not UTF-8 text")
    source, problems = read_yaml(tmp_path / "absent.yaml", "absent.yaml")
    assert source is None
    assert problems[0].message.startswith("cannot read")


def test_anchors_and_merge_keys(tmp_path: Path) -> None:
    path = _write(tmp_path, "base: &b\n  size: 1\nitem:\n  <<: *b\n  name: x\n")
    source, problems = read_yaml(path, "doc.yaml")
    assert problems == []
    assert source is not None
    assert source.data["item"] == {"size": 1, "name": "x"}


@pytest.mark.parametrize(
    ("path", "text"),
    [
        ((), ""),
        (("subscribers", 2, "view", "datum"), "subscribers[2].view.datum"),
        (("fields", "Vehicle.Speed", "coarsen"), "fields[Vehicle.Speed].coarsen"),
        (("catalogue", "geo.grid-floor"), "catalogue[geo.grid-floor]"),
        ((0, "a"), "[0].a"),
    ],
)
def test_format_path(path: tuple[str | int, ...], text: str) -> None:
    assert format_path(path) == text
