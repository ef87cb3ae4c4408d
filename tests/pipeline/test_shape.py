"""Shape: every output follows its subscriber's view schema; identifiers and bytes are stable.

``jsonschema`` is not a dependency, so the outputs are checked with the small validator below,
which implements exactly the keywords the view schemas use (and fails on any other).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
from typing import Any

import numpy as np
import orjson
import pytest

from gateway.pipeline.decode import decode_records
from gateway.pipeline.run import evaluate
from gateway.pipeline.shape import (
    encode_view,
    ephemeral_keys,
    iso_times,
    keyed_pseudonym,
    message_id,
    message_ids,
    record_part,
    trip_pseudonym,
)
from gateway.policy.bundle import PolicyBundle
from gateway.policy.loader import load_bundle
from gateway.policy.view_schema import view_schema
from gateway.state.snapshot import ConsentBook, StateSnapshot, TripState
from tests.pipeline.test_decide import (
    ABROAD,
    CITY,
    NOW,
    PROHIBITED,
    SENSITIVE_1,
    SENSITIVE_2,
    VIN,
    VIN_NONE,
    VIN_TRAFFIC,
    beijing,
    keys,
    mid_trip,
    record,
)
from tests.test_jsonbytes import retained

_KEYWORDS = {
    "$schema", "$id", "title", "description", "type", "const", "properties", "required",
    "additionalProperties", "oneOf", "minimum", "maximum", "exclusiveMaximum", "multipleOf",
    "pattern", "minLength", "items", "format",
}  # fmt: skip
_DATE_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$")


def _is_type(value: Any, kind: str) -> bool:
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    return {
        "null": value is None,
        "boolean": isinstance(value, bool),
        "string": isinstance(value, str),
        "object": isinstance(value, dict),
        "array": isinstance(value, list),
        "number": number,
        "integer": number and float(value).is_integer(),
    }[kind]


def _same(a: Any, b: Any) -> bool:
    if _is_type(a, "number") and _is_type(b, "number"):
        return bool(a == b)
    return type(a) is type(b) and a == b


def validate(value: Any, schema: dict[str, Any], where: str = "$") -> list[str]:
    """Errors of ``value`` against ``schema`` (the subset of draft 2020-12 views use)."""
    unknown = set(schema) - _KEYWORDS
    assert not unknown, f"validator does not implement {unknown}"
    errors: list[str] = []
    if "type" in schema and not _is_type(value, schema["type"]):
        return [f"{where}: {value!r} is not {schema['type']}"]
    if "const" in schema and not _same(value, schema["const"]):
        errors.append(f"{where}: {value!r} != {schema['const']!r}")
    if "oneOf" in schema:
        matches = [s for s in schema["oneOf"] if not validate(value, s, where)]
        if len(matches) != 1:
            errors.append(f"{where}: matches {len(matches)} of oneOf")
    if _is_type(value, "number"):
        if "minimum" in schema and value < schema["minimum"]:
            errors.append(f"{where}: {value} < minimum")
        if "maximum" in schema and value > schema["maximum"]:
            errors.append(f"{where}: {value} > maximum")
        if "exclusiveMaximum" in schema and value >= schema["exclusiveMaximum"]:
            errors.append(f"{where}: {value} >= exclusiveMaximum")
        if "multipleOf" in schema:
            k = value / schema["multipleOf"]
            if abs(k - round(k)) > 1e-9:
                errors.append(f"{where}: {value} not a multiple of {schema['multipleOf']}")
    if isinstance(value, str):
        if "pattern" in schema and not re.search(schema["pattern"], value):
            errors.append(f"{where}: {value!r} does not match {schema['pattern']}")
        if "minLength" in schema and len(value) < schema["minLength"]:
            errors.append(f"{where}: too short")
        if schema.get("format") == "date-time" and not _DATE_TIME.match(value):
            errors.append(f"{where}: {value!r} is not a date-time")
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            errors += validate(item, schema["items"], f"{where}[{i}]")
    if isinstance(value, dict):
        props = schema.get("properties", {})
        for name in schema.get("required", []):
            if name not in value:
                errors.append(f"{where}: missing {name}")
        for name, item in value.items():
            if name in props:
                errors += validate(item, props[name], f"{where}.{name}")
            elif schema.get("additionalProperties") is False:
                errors.append(f"{where}: unexpected {name}")
    return errors


def test_the_validator_catches_what_it_should() -> None:
    schema = view_schema(load_bundle(), "insureco-ubi")
    good = {
        "schema": "icvgw.view/1",
        "subscriber": "insureco-ubi",
        "message_id": "m",
        "audit_seq": 1,
        "policy_version": "0" * 64,
        "vehicle": "pk-1",
        "time": "2026-01-15T02:00:00Z",
        "location": None,
        "signals": {"Vehicle.Speed": 40.0},
    }
    assert validate(good, schema) == []
    assert validate({**good, "extra": 1}, schema)
    assert validate({**good, "signals": {"Vehicle.Speed": 41.0}}, schema)  # not coarsened
    assert validate({**good, "location": {"datum": "WGS-84"}}, schema)
    assert validate({**good, "audit_seq": True}, schema)
    assert validate({k: v for k, v in good.items() if k != "time"}, schema)


@pytest.fixture(scope="module")
def bundle() -> PolicyBundle:
    return load_bundle()


def varied_records() -> list[dict[str, Any]]:
    places = [CITY, PROHIBITED, SENSITIVE_1, SENSITIVE_2, ABROAD, None]
    vins = [VIN, VIN_TRAFFIC, VIN_NONE]
    out = []
    for i in range(36):
        signals = {
            "Vehicle__CurrentLocation__Altitude": 10.0 + i,
            "Vehicle__CurrentLocation__Heading": (37.0 * i) % 360,
            "Vehicle__Speed": 3.3 * i,
            "Vehicle__TraveledDistance": 1000.0 + i,
            "Vehicle__Powertrain__TractionBattery__StateOfCharge__Current": 50.0 + i,
            "Vehicle__Body__Lights__Hazard__IsSignaling": i % 2 == 0,
            "Vehicle__OBD__DTCList": ["P0001"] if i % 3 == 0 else [],
            "Vehicle__StartTime": "2026-01-15T01:00:07+00:00",
            "oem_secret": i,
        }
        out.append(record(vins[i % 3], t=NOW - 3600 + 61.5 * i, where=places[i % 6], **signals))
    return out


def encoded_outputs(d: Any, sh: Any) -> list[tuple[str, dict[str, Any], bytes]]:
    out = []
    for i, view in enumerate(sh.views):
        sub = d.plan.views[int(sh.subscriber[i])].id
        data = encode_view(view, audit_seq=i, message_id=sh.message_ids[i])
        out.append((sub, orjson.loads(data), data))
    for j, held in enumerate(sh.held):
        data = encode_view(held.view, audit_seq=10_000 + j, message_id=held.message_id)
        out.append((held.subscriber, orjson.loads(data), data))
    return out


@pytest.mark.parametrize("now", [NOW, beijing(2029, 1, 5, 10, 0)], ids=["2026", "expired"])
def test_every_output_validates_against_its_view_schema(bundle: PolicyBundle, now: float) -> None:
    records = varied_records()
    if now != NOW:
        shift = now - NOW
        records = [{**r, "Vehicle.CurrentLocation.Timestamp": r[
            "Vehicle.CurrentLocation.Timestamp"] + shift} for r in records]  # fmt: skip
    batch = decode_records(records, bundle.aliases)
    d, sh = evaluate(batch, bundle, mid_trip(bundle, records, now), keys)
    outputs = encoded_outputs(d, sh)
    assert {sub for sub, _, _ in outputs} == set(bundle.subscribers)
    schemas = {sub: view_schema(bundle, sub) for sub in bundle.subscribers}
    for sub, obj, _ in outputs:
        assert validate(obj, schemas[sub]) == [], (sub, obj)
    mapco = [obj for sub, obj, _ in outputs if sub == "mapco-nav" and obj["location"]]
    assert mapco
    expected = "WGS-84" if now == NOW else "GCJ-02"
    assert {o["location"]["datum"] for o in mapco} == {expected}


def test_no_vin_and_no_wgs84_name_outside_the_qualified_view(bundle: PolicyBundle) -> None:
    records = varied_records()
    batch = decode_records(records, bundle.aliases)
    d, sh = evaluate(batch, bundle, mid_trip(bundle, records, NOW), keys)
    for sub, obj, data in encoded_outputs(d, sh):
        for vin in (VIN, VIN_TRAFFIC, VIN_NONE):
            assert vin.encode() not in data
        assert b"Vehicle.CurrentLocation.Latitude" not in data
        assert b"Vehicle.CurrentLocation.Longitude" not in data
        assert b"oem_secret" not in data
        if sub != "mapco-nav":
            assert b"wgs84" not in data
        location = obj.get("location")
        if location:
            assert location["datum"] in ("GCJ-02", "WGS-84")
            suffix = "gcj02" if location["datum"] == "GCJ-02" else "wgs84"
            assert f"lat_{suffix}" in location and f"lon_{suffix}" in location


def test_encode_view_is_compact_sorted_and_deterministic() -> None:
    view = {"signals": {"b": 1, "a": 2}, "schema": "icvgw.view/1", "location": None}
    data = encode_view(view, audit_seq=7, message_id="m1")
    assert data == (
        b'{"audit_seq":7,"location":null,"message_id":"m1","schema":"icvgw.view/1",'
        b'"signals":{"a":2,"b":1}}'
    )
    assert encode_view(dict(reversed(view.items())), audit_seq=7, message_id="m1") == data
    assert "audit_seq" not in view  # the view object is not changed


def test_message_ids_are_stable_for_a_redelivered_record(bundle: PolicyBundle) -> None:
    rec = record(VIN, t=NOW - 60, msg_id="m-42")
    other = record(VIN_NONE, t=NOW - 60)
    _d1, sh1 = evaluate(
        decode_records([rec], bundle.aliases), bundle, mid_trip(bundle, [rec], NOW), keys
    )
    _d2, sh2 = evaluate(
        decode_records([other, rec], bundle.aliases),
        bundle,
        mid_trip(bundle, [other, rec], NOW),
        keys,
    )
    first = dict(zip(sh1.subscriber.tolist(), sh1.message_ids, strict=True))
    rows = zip(sh2.subscriber.tolist(), sh2.row.tolist(), sh2.message_ids, strict=True)
    second = {s: m for s, r, m in rows if r == 1}
    assert first and first == {s: second[s] for s in first}
    assert len(set(first.values())) == len(first)  # one id per subscriber
    key = keys("mapco-nav")
    assert first[0] == message_id(key, "mapco-nav", VIN, "m-42", NOW - 60)
    assert message_id(key, "mapco-nav", VIN, None, 1.0) == message_id(
        key, "mapco-nav", VIN, None, 1.0004
    )
    assert message_id(key, "mapco-nav", VIN, None, 1.0) != message_id(
        key, "mapco-nav", VIN, None, 1.002
    )
    rejected = message_id(key, "mapco-nav", None, None, math.nan)  # never raises
    assert rejected == message_id(key, "mapco-nav", None, None, math.nan)
    assert message_ids(key, "mapco-nav", [None], [None], [math.nan]) == [rejected]
    assert message_ids(key, "mapco-nav", [VIN, VIN], ["m-42", None], [0.0, 1.0]) == [
        message_id(key, "mapco-nav", VIN, "m-42", 0.0),
        message_id(key, "mapco-nav", VIN, None, 1.0),
    ]


def test_a_reused_msg_id_gets_a_new_message_id_with_its_new_time() -> None:
    # A TCU whose counter restarts after a reboot sends "7" again, hours later: the two
    # records must not share an output id (it would link the trips under per-trip pseudonyms).
    key = keys("mapco-nav")
    earlier = message_id(key, "mapco-nav", VIN, "7", NOW - 7200)
    later = message_id(key, "mapco-nav", VIN, "7", NOW - 60)
    assert earlier != later
    assert later == message_id(key, "mapco-nav", VIN, "7", NOW - 60)  # a redelivery
    assert later != message_id(key, "mapco-nav", VIN, "7", NOW - 60.002)
    assert later != message_id(key, "mapco-nav", VIN, None, NOW - 60)
    assert later != message_id(key, "mapco-nav", VIN_NONE, "7", NOW - 60)
    # Distinct records, distinct parts: msg_ids that look like times or separators.
    tricky = [("1:2", 3.0), ("2", 1.003), ("3000:1", 2.0), (None, 3.0), ("t:3000", 3.0)]
    assert len({record_part(r, t) for r, t in tricky}) == len(tricky)
    vins: list[str | None] = [VIN, VIN, VIN, None, VIN_NONE]
    rids = ["7", "7", None, "7", "x:1"]
    times = [NOW - 7200, NOW - 60, NOW - 60, math.nan, math.inf]
    assert message_ids(key, "mapco-nav", vins, rids, times) == [
        message_id(key, "mapco-nav", v, r, t) for v, r, t in zip(vins, rids, times, strict=True)
    ]


def test_pseudonyms_are_per_subscriber_and_per_trip() -> None:
    a, b = keys("a"), keys("b")
    assert keyed_pseudonym(a, VIN) == keyed_pseudonym(a, VIN)
    assert keyed_pseudonym(a, VIN) != keyed_pseudonym(b, VIN)
    assert keyed_pseudonym(a, VIN) != keyed_pseudonym(a, VIN_NONE)
    assert trip_pseudonym(a, VIN, 100.0) != trip_pseudonym(a, VIN, 200.0)
    assert trip_pseudonym(a, VIN, 100.0) != trip_pseudonym(b, VIN, 100.0)
    assert re.fullmatch(r"pk-[0-9a-f]{32}", keyed_pseudonym(a, VIN))
    assert re.fullmatch(r"pt-[0-9a-f]{32}", trip_pseudonym(a, VIN, 100.0))
    expected = hashlib.blake2b(b"vehicle\x1f" + VIN.encode(), key=a, digest_size=16).hexdigest()
    assert keyed_pseudonym(a, VIN) == "pk-" + expected


def test_trip_pseudonyms_change_with_the_trip_and_keyed_ones_do_not(
    bundle: PolicyBundle,
) -> None:
    recs = [record(VIN_NONE, t=NOW - 3000), record(VIN_NONE, t=NOW - 60)]  # a gap: two trips
    state = StateSnapshot(now=NOW, consents=ConsentBook.from_policy(bundle.consents))
    # Untrimmed trips (trimming under per-trip pseudonyms is tested in test_decide).
    trips = bundle.rules.trips.model_copy(update={"pseudonym_trim_m": 0.0})
    bundle = dataclasses.replace(bundle, rules=bundle.rules.model_copy(update={"trips": trips}))
    d, sh = evaluate(decode_records(recs, bundle.aliases), bundle, state, keys)
    by_sub: dict[str, list[str]] = {}
    for s, view in zip(sh.subscriber.tolist(), sh.views, strict=True):
        by_sub.setdefault(d.plan.views[s].id, []).append(view["vehicle"])
    for s, held in zip(sh.held_subscriber.tolist(), sh.held, strict=True):
        by_sub.setdefault(d.plan.views[s].id, []).append(held.view["vehicle"])
    mapco = by_sub["mapco-nav"]  # no consent: per-trip pseudonyms
    assert len(mapco) == 2 and mapco[0] != mapco[1] and all(p.startswith("pt-") for p in mapco)
    oem = by_sub["oem-hq-de"]  # keyed pseudonym (no position, so no consent question)
    assert oem == [keyed_pseudonym(keys("oem-hq-de"), VIN_NONE)] * len(oem)


def test_held_views_carry_the_output_they_will_have(bundle: PolicyBundle) -> None:
    rec = record(VIN_TRAFFIC, Vehicle__Speed=44.0)
    _d, sh = evaluate(
        decode_records([rec], bundle.aliases), bundle, mid_trip(bundle, [rec], NOW), keys
    )
    (held,) = [h for h in sh.held if h.subscriber == "sh-traffic"]
    assert held.view["location"]["precision_m"] == 50
    assert held.view["signals"] == {"Vehicle.Speed": 40.0}
    assert held.decision == "share" and held.precision_m == 50.0
    assert held.basis == "c-0003"
    assert held.transforms["pseudonym"] == "per-trip"
    assert held.transforms["datum"] == "GCJ-02" and held.transforms["grid_m"] == 50
    assert held.lat == rec["Vehicle.CurrentLocation.Latitude"]
    assert (
        validate(
            orjson.loads(encode_view(held.view, audit_seq=1, message_id=held.message_id)),
            view_schema(bundle, "sh-traffic"),
        )
        == []
    )


def test_other_time_fields_are_truncated_like_the_record_time(bundle: PolicyBundle) -> None:
    rec = record(VIN, Vehicle__StartTime="2026-01-15T01:00:07.5+00:00")
    bad = record(VIN, t=NOW - 30, Vehicle__StartTime="yesterday")
    d, sh = evaluate(
        decode_records([rec, bad], bundle.aliases), bundle, mid_trip(bundle, [rec], NOW), keys
    )
    s = d.plan.subscribers.index("insureco-ubi")
    views = [v for v, sub in zip(sh.views, sh.subscriber.tolist(), strict=True) if sub == s]
    views += [h.view for h in sh.held if h.subscriber == "insureco-ubi"]
    starts = [v["signals"].get("Vehicle.StartTime") for v in views]
    assert "2026-01-15T01:00:00Z" in starts


def test_iso_times() -> None:
    assert iso_times(np.array([0.0, 86400.0])) == ["1970-01-01T00:00:00Z", "1970-01-02T00:00:00Z"]
    assert iso_times(np.array([0.25, 1.0])) == ["1970-01-01T00:00:00.250Z", "1970-01-01T00:00:01Z"]
    assert iso_times(np.empty(0)) == []


def test_ephemeral_keys_are_stable_per_process_object_and_private() -> None:
    one, two = ephemeral_keys(), ephemeral_keys()
    assert one("a") == one("a") != one("b")
    assert one("a") != two("a")
    assert len(one("a")) == 32


def test_location_cell_centre_and_precision(bundle: PolicyBundle) -> None:
    rec = record(VIN)
    d, sh = evaluate(
        decode_records([rec], bundle.aliases), bundle, mid_trip(bundle, [rec], NOW), keys
    )
    s = d.plan.subscribers.index("insureco-ubi")
    held = next(h for h in sh.held if h.subscriber == "insureco-ubi")
    loc = held.view["location"]
    layer = d.layer(s)
    out = layer.outputs["gcj02"]
    assert (loc["lat_gcj02"], loc["lon_gcj02"]) == (float(out.lat[0]), float(out.lon[0]))
    assert loc["cell"] == layer.cell_ids(np.array([0]))[0]
    assert not math.isclose(loc["lat_gcj02"], CITY[0], abs_tol=1e-7)
    assert json.dumps(loc)  # plain JSON types


def test_trip_states_without_a_start_are_fine(bundle: PolicyBundle) -> None:
    rec = record(VIN)
    state = StateSnapshot(
        now=NOW,
        trips={VIN: TripState(NOW - 100, math.nan, math.nan, 0.0, NOW - 100, math.nan, math.nan)},
    )
    d, _sh = evaluate(decode_records([rec], bundle.aliases), bundle, state, keys)
    assert d.delta.trips[VIN].start_lat == rec["Vehicle.CurrentLocation.Latitude"]


@pytest.mark.parametrize("width", [3, 62, 63, 70])
def test_row_patterns_group_rows_by_their_flags_at_any_width(width: int) -> None:
    from gateway.pipeline.shape import _patterns

    rng = np.random.default_rng(width)
    flags = [rng.random(200) < 0.1 for _ in range(width)]
    kinds, inverse = _patterns(flags)
    for row in range(200):
        code = kinds[int(inverse[row])]
        assert [bool(code >> j & 1) for j in range(width)] == [bool(f[row]) for f in flags]
    assert len(set(kinds)) == len(kinds)


def test_encoded_views_hold_about_their_length() -> None:
    """Views wait in the outbox queue until confirmed: each costs its length."""
    view = {"vehicle": "v" * 16, "signals": {"Vehicle.Speed": 50}, "pad": "x" * 300}
    held, length = retained(lambda i: encode_view(view, audit_seq=i, message_id=f"m{i}"))
    assert held < length + 1_000 * 64
