"""YAML with line numbers: every node located, pydantic errors mapped to file:line: field."""

from __future__ import annotations

import gc
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from gateway.errors import Problem
from gateway.located_yaml import _Loader, format_path, read_yaml, validation_problems


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


def test_the_libyaml_parse_reads_the_same_dialect(tmp_path: Path) -> None:
    """Where libyaml composes, the data must be what the pure-Python loader gives with the
    same resolvers: booleans only true/false, YAML 1.1 numbers, anchors and merge keys."""
    text = (
        "country: NO\nflag: yes\nok: true\noff: False\nn: 0x1F\nf: 1.5e3\nt: 2025-01-10\n"
        "base: &b {size: 1}\nitems:\n  - <<: *b\n    name: 'x'\n  - ~\n"
    )
    source, problems = read_yaml(_write(tmp_path, text), "doc.yaml")
    assert problems == [] and source is not None
    assert source.data == yaml.load(text, Loader=_Loader)
    assert source.data["country"] == "NO" and source.data["flag"] == "yes"
    assert source.data["ok"] is True and source.data["off"] is False
    assert source.data["items"][0] == {"size": 1, "name": "x"}


def test_reading_leaves_no_nodes_behind(tmp_path: Path) -> None:
    """The nodes go as soon as the data is built, even with the collector paused (as the
    bundle loader pauses it): a 10,000-consent file made 300,000 of them."""
    body = "".join(f"  - {{id: c{i}, size: {i}}}\n" for i in range(200))
    path = _write(tmp_path, "items:\n" + body)
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        source, problems = read_yaml(path, "doc.yaml")
        alive = sum(isinstance(obj, yaml.Node) for obj in gc.get_objects())
    finally:
        if was_enabled:
            gc.enable()
    assert problems == [] and source is not None and len(source.data["items"]) == 200
    assert alive == 0


@pytest.mark.parametrize(
    ("text", "data"),
    [
        ("description: |\n  \tText\n", {"description": "\tText\n"}),  # libyaml refuses
        ("%FOO bar\n---\na: 1\n", {"a": 1}),  # an unknown directive: ignored
    ],
)
def test_valid_yaml_that_libyaml_refuses_still_loads(
    tmp_path: Path, text: str, data: object
) -> None:
    source, problems = read_yaml(_write(tmp_path, text), "doc.yaml")
    assert problems == [] and source is not None
    assert source.data == data


def test_a_tab_is_named_in_the_error(tmp_path: Path) -> None:
    source, problems = read_yaml(_write(tmp_path, "items:\n\t- size: 1\n"), "doc.yaml")
    assert source is None
    assert len(problems) == 1 and problems[0].line == 2
    assert "'\\t'" in problems[0].message


@pytest.mark.parametrize(
    ("text", "line", "field", "words"),
    [
        ("a: 1\nb: !!int xyz\n", 2, "b", "cannot read this value"),
        ("a: 1\nwhen: !!timestamp soon\n", 2, "when", "cannot read this value"),
        ("a: !custom 1\n", 1, "a", "cannot read this value"),
        ("m:\n  <<: 1\n", 2, "m", "cannot merge"),
        ("a: &x [1, *x]\n", 1, "a[1]", "contains it"),
        ('a: 1\nname: "lon \\ud83d\\ude00"\n', 2, "name", "not Unicode text"),
    ],
)
def test_values_that_cannot_be_read_are_located_problems(
    tmp_path: Path, text: str, line: int, field: str, words: str
) -> None:
    source, problems = read_yaml(_write(tmp_path, text), "doc.yaml")
    assert source is not None
    assert [(p.line, p.field) for p in problems] == [(line, field)]
    assert words in problems[0].message


def test_keys_that_are_not_strings_are_shown_in_brackets(tmp_path: Path) -> None:
    source, problems = read_yaml(_write(tmp_path, "~: 1\n7: {x: 2}\n"), "doc.yaml")
    assert problems == [] and source is not None
    assert source.data == {None: 1, 7: {"x": 2}}
    assert format_path((7, "x")) == "[7].x"
    assert format_path((None, "x")) == "[None].x"  # type: ignore[arg-type]


def test_keys_that_cannot_be_read_are_reported_once_each(tmp_path: Path) -> None:
    text = "a: 1\n!!int x: 2\n!!int y: 3\n"
    source, problems = read_yaml(_write(tmp_path, text), "doc.yaml")
    assert source is not None and source.data == {"a": 1}
    assert [(p.line, p.message.split(":")[0]) for p in problems] == [
        (2, "cannot read this value"),
        (3, "cannot read this value"),
    ]
