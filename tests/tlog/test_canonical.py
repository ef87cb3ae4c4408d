"""RFC 8785 canonical JSON: the RFC's own examples, and a per-value reference."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.errors import AuditError
from gateway.tlog.canonical import canonical_json, parse_canonical

# --- reference: RFC 8785 §3.2.2 / ECMAScript JSON.stringify, written out per character ---

_ESC = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def ref_string(s: str) -> str:
    out = ['"']
    for c in s:
        if c in _ESC:
            out.append(_ESC[c])
        elif ord(c) < 0x20:
            out.append(f"\\u{ord(c):04x}")
        else:
            out.append(c)
    out.append('"')
    return "".join(out)


def ref_jcs(v: Any) -> str:
    if v is None:
        return "null"
    if v is True:
        return "true"
    if v is False:
        return "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return ref_string(v)
    if isinstance(v, list):
        return "[" + ",".join(ref_jcs(x) for x in v) + "]"
    keys = sorted(v, key=lambda k: [u for u in k.encode("utf-16-be")])
    return "{" + ",".join(ref_string(k) + ":" + ref_jcs(v[k]) for k in keys) + "}"


# ------------------------------------------------------------------------------------------


def test_rfc8785_sorting_example() -> None:
    """RFC 8785 §3.2.3: keys sort by UTF-16 code units (emoji before U+FB33)."""
    value = {
        "\u20ac": "Euro Sign",
        "\r": "Carriage Return",
        "\ufb33": "Hebrew Letter Dalet With Dagesh",
        "1": "One",
        "\U0001f600": "Emoji: Grinning Face",
        "\u0080": "Control",
        "\u00f6": "Latin Small Letter O With Diaeresis",
    }
    expected = (
        '{"\\r":"Carriage Return","1":"One","\u0080":"Control",'
        '"\u00f6":"Latin Small Letter O With Diaeresis","\u20ac":"Euro Sign",'
        '"\U0001f600":"Emoji: Grinning Face","\ufb33":"Hebrew Letter Dalet With Dagesh"}'
    )
    assert canonical_json(value) == expected.encode()


def test_rfc8785_string_escapes() -> None:
    """The non-number parts of RFC 8785 §3.2.2.2's sample: escapes and literals."""
    value = {
        "literals": [None, True, False],
        "string": "\u20ac$\u000f\u000aA'\u0042\u0022\u005c\\\"/",
    }
    assert (
        canonical_json(value)
        == (
            '{"literals":[null,true,false],"string":"\u20ac$\\u000f\\nA\'B\\"\\\\\\\\\\"/"}'
        ).encode()
    )


def test_no_whitespace_and_nested_sorting() -> None:
    assert canonical_json({"b": [1, {"z": 1, "a": [True]}], "a": None}) == (
        b'{"a":null,"b":[1,{"a":[true],"z":1}]}'
    )


@pytest.mark.parametrize(
    "bad",
    [1.5, {"x": 0.0}, [2**53], -(2**53), {1: "a"}, {"s": "\ud800"}, {"x": object()}, b"bytes"],
)
def test_refused_values(bad: Any) -> None:
    with pytest.raises(AuditError):
        canonical_json(bad)


def test_largest_exact_integers_are_allowed() -> None:
    assert canonical_json([2**53 - 1, -(2**53 - 1)]) == b"[9007199254740991,-9007199254740991]"


def test_parse_refuses_non_canonical_bytes() -> None:
    assert parse_canonical(b'{"a":1,"b":[true]}') == {"a": 1, "b": [True]}
    for bad in (b'{"b":1,"a":2}', b'{"a": 1}', b'{"a":1.0}', b'{"a":1,"a":1}', b"{", b'"\\u0041"'):
        with pytest.raises(AuditError):
            parse_canonical(bad)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**53) + 1, 2**53 - 1)
    | st.text(st.characters(exclude_categories=("Cs",))),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.text(st.characters(exclude_categories=("Cs",)), max_size=6), children, max_size=4
        )
    ),
    max_leaves=12,
)


@settings(max_examples=150)
@given(json_values)
def test_matches_the_reference_and_round_trips(value: Any) -> None:
    data = canonical_json(value)
    assert data == ref_jcs(value).encode("utf-8")
    assert parse_canonical(data) == value
