"""Entry encoding: every field RULES.md §5 asks for, canonical bytes, times."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.errors import AuditError
from gateway.keys import KeyRing
from gateway.tlog.canonical import canonical_json
from gateway.tlog.entries import (
    GENESIS_PREV,
    AdminAction,
    AdminEntry,
    Decision,
    DecisionEntry,
    encode_entry,
    format_time,
    parse_time,
    row_columns,
)
from tests.audit.conftest import T0, decision
from tests.test_jsonbytes import retained


def test_decision_entry_carries_every_field_of_rules_section_5(ring: KeyRing) -> None:
    body = orjson.loads(encode_entry(decision(ring, 4), 4, b"\x01" * 32))
    assert set(body) == {
        "kind",
        "seq",
        "prev",
        "time",  # time
        "instance",  # gateway instance
        "msg",  # message id
        "vehicle",  # keyed vehicle reference
        "subscriber",  # recipient ...
        "region",  # ... and its region
        "decision",  # shared / redacted / blocked
        "rules",  # rule ids fired
        "transforms",  # datum, grid size, zone masks, pseudonymisation
        "precision_m",  # output precision
        "basis",  # legal basis or consent id
        "policy",  # policy version (hash)
        "digest",  # keyed digest of the exact bytes shared
    }
    assert body["seq"] == 4 and body["prev"] == "01" * 32
    assert body["time"] == format_time(round((T0 + 4) * 1000))


def test_unclassified_field_names_never_enter_an_entry(ring: KeyRing) -> None:
    """Only a count of unclassified fields: their names are input, possibly a VIN."""
    entry = decision(ring, 1)
    named = dataclasses.replace(entry, transforms={"unclassified": ["OEM.Owner.LSVAU2181P2100001"]})
    with pytest.raises(AuditError, match="unclassified"):
        encode_entry(named, 1, None)
    counted = dataclasses.replace(entry, transforms={"unclassified": 1})
    assert orjson.loads(encode_entry(counted, 1, None))["transforms"] == {"unclassified": 1}


def test_encoding_is_the_canonical_json_of_the_fields(ring: KeyRing) -> None:
    entry = decision(ring, 1, transforms={"zone": ["é"], "é": 1, "\U0001f600": 2, "\ufb33": 3})
    data = encode_entry(entry, 0, None)
    body = orjson.loads(data)
    assert data == canonical_json(body)
    assert body["prev"] == GENESIS_PREV
    assert list(body["transforms"]) == ["zone", "é", "\U0001f600", "\ufb33"]  # UTF-16 order
    admin = AdminEntry(T0, "w1", AdminAction.APIKEY_REVOKED, "key-7", {"by": "ops"})
    abody = orjson.loads(encode_entry(admin, 3, b"\x02" * 32))
    assert (abody["kind"], abody["action"], abody["subject"]) == (
        "admin",
        "apikey.revoked",
        "key-7",
    )


def test_row_columns_match_what_the_store_writes(ring: KeyRing) -> None:
    entry = decision(ring, 2)
    body = orjson.loads(encode_entry(entry, 0, None))
    assert row_columns(body) == (round(entry.time * 1000), "decision", *entry.columns())
    admin = AdminEntry(T0, "w1", AdminAction.POLICY_LOADED, "sha256:x")
    abody = orjson.loads(encode_entry(admin, 0, None))
    assert row_columns(abody) == (round(T0 * 1000), "admin", *admin.columns())
    dead = DecisionEntry(T0, "w1", 5, Decision.DEAD_LETTERED, "p", reason="bad-timestamp")
    assert row_columns(orjson.loads(encode_entry(dead, 0, None)))[4] == "dead-lettered"


@settings(max_examples=200)
@given(st.integers(0, 4_102_444_800_000))
def test_times_round_trip_and_match_the_iso_reference(ms: int) -> None:
    text = format_time(ms)
    ref = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=ms)
    assert text == ref.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"
    assert parse_time(text) == ms


@settings(max_examples=100)
@given(st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31)))
def test_every_four_digit_year_round_trips(when: datetime) -> None:
    ms = (when.replace(tzinfo=UTC) - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1)
    assert parse_time(format_time(ms)) == ms


def test_parse_time_accepts_offsets_and_dates() -> None:
    assert parse_time("2025-01-01") == parse_time("2025-01-01T00:00:00Z")
    assert parse_time("2025-01-01T08:00:00+08:00") == parse_time("2025-01-01T00:00:00Z")


def test_encoded_entries_hold_about_their_length(ring: KeyRing) -> None:
    """Bodies are kept until their batch is written (10,000 at once for a consent seed)."""
    entries = [decision(ring, i) for i in range(1_000)]
    held, length = retained(lambda i: encode_entry(entries[i], i, None))
    assert held < length + 1_000 * 64
