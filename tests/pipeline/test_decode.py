"""Decode never raises on content; every bad payload or record is accounted for."""

from __future__ import annotations

import math
import tracemalloc
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.model import Datum, Envelope, ErrorCode, RowStatus
from gateway.pipeline.decode import MAX_FIELDS, decode, decode_records, topic_vehicle
from gateway.policy.codes import is_valid_vin
from gateway.testing import make_vin
from gateway.vss import LATITUDE, LONGITUDE, TIMESTAMP, VIN

V1 = make_vin(183294)
V2 = make_vin(40212, "LFV2A21K6H3")


def rec(vin: str = V1, **extra: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        VIN: vin,
        TIMESTAMP: "2026-11-28T12:00:00.500Z",
        LATITUDE: 31.23,
        LONGITUDE: 121.47,
        "Vehicle.Speed": 42.0,
    }
    base.update(extra)
    return base


def env(payload: Any, vin: str = V1, raw: bytes | None = None) -> Envelope:
    data = raw if raw is not None else orjson.dumps(payload)
    return Envelope(topic=f"vehicles/{vin}/telemetry", payload=data, received_at=0.0)


def test_object_and_array_payloads_become_rows() -> None:
    out = decode([env(rec()), env([rec(), rec(**{"msg_id": "m2"})])])
    b = out.batch
    assert out.dead == []
    assert len(b) == 3
    assert b.source.tolist() == [0, 1, 1]
    assert b.ok.all()
    assert b.time[0] == pytest.approx(1795867200.5)
    assert b.lat.tolist() == [31.23] * 3
    assert b.datum.tolist() == [Datum.WGS84] * 3
    assert b.signals["Vehicle.Speed"].tolist() == [42.0] * 3
    assert b.msg_id is not None
    assert b.msg_id.tolist() == [None, None, "m2"]


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"{not json", "not-json"),
        (b'"a string"', "not-object"),
        (b"42", "not-object"),
        (b"[]", "empty"),
        (b"\xff\xfe", "not-json"),
    ],
)
def test_unusable_payloads_are_dead_letters(raw: bytes, reason: str) -> None:
    out = decode([env(None, raw=raw), env(rec())])
    assert [(d.source, d.reason) for d in out.dead] == [(0, reason)]
    assert len(out.batch) == 1 and out.batch.ok.all()


def test_a_payload_naming_too_many_fields_is_dead_lettered_in_bounded_memory() -> None:
    """Every field name is a column as long as the batch: five 250 KB payloads of 20,000
    names each beside two arrays of 1,000 records took 1.6 GB to decode."""
    wide = [env(rec(msg_id=str(j), **{f"k{j}_{i}": 0 for i in range(20_000)})) for j in range(5)]
    arrays = [env([rec(msg_id=f"r{j}-{i}") for i in range(1000)]) for j in range(2)]
    fits = env(rec(**{f"k{i}": 0 for i in range(MAX_FIELDS - len(rec()))}))
    tracemalloc.start()
    try:
        out = decode([*wide, *arrays, fits])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert [(d.source, d.reason) for d in out.dead] == [(j, "too-many-fields") for j in range(5)]
    assert out.batch.ok.all() and len(out.batch) == 2001
    assert peak < 100_000_000, f"{peak:,} bytes"


def test_oversize_payload_is_dead_lettered_without_parsing() -> None:
    out = decode([env(rec(pad="x" * 2000))], max_payload=1000)
    assert [d.reason for d in out.dead] == ["oversize"]
    assert len(out.batch) == 0


@pytest.mark.parametrize(
    ("record", "code"),
    [
        ("not an object", ErrorCode.NOT_AN_OBJECT),
        ({TIMESTAMP: "2026-11-28T12:00:00Z"}, ErrorCode.MISSING_VEHICLE_ID),
        ({VIN: "", TIMESTAMP: "2026-11-28T12:00:00Z"}, ErrorCode.MISSING_VEHICLE_ID),
        ({VIN: V1}, ErrorCode.MISSING_TIMESTAMP),
        ({VIN: V1, TIMESTAMP: "yesterday"}, ErrorCode.BAD_TIMESTAMP),
        ({VIN: V1, TIMESTAMP: "2026-11-28T12:00:00"}, ErrorCode.BAD_TIMESTAMP),
        ({VIN: V1, TIMESTAMP: True}, ErrorCode.BAD_TIMESTAMP),
        (rec(**{LATITUDE: "31.2"}), ErrorCode.NON_NUMERIC_COORDINATE),
        (rec(**{LATITUDE: None}), ErrorCode.MISSING_COORDINATE),
        (rec(**{LONGITUDE: 200.0}), ErrorCode.COORDINATE_OUT_OF_RANGE),
        (rec(vin=V2), ErrorCode.VEHICLE_ID_MISMATCH),
    ],
)
def test_bad_records_are_rejected_rows(record: Any, code: ErrorCode) -> None:
    out = decode([env([record, rec()])])
    b = out.batch
    assert out.dead == []
    assert b.error.tolist() == [code, ErrorCode.OK]
    assert b.status.tolist() == [RowStatus.REJECTED, RowStatus.OK]


@pytest.mark.parametrize("value", [[31.2], [[31.2]], [31.2, 121.4], [], [None], [[]]])
@pytest.mark.parametrize("field", [LATITUDE, LONGITUDE])
def test_a_coordinate_that_is_a_list_or_object_is_not_a_number(field: str, value: Any) -> None:
    """``[31.2]`` was taken for 31.2 and shared; ``[31.2, 121.4]`` or ``[]`` raised and failed
    the whole batch, every vehicle in it, again on each redelivery."""
    for records in ([rec(**{field: value})], [rec(**{field: value}), rec()]):
        b = decode_records(records)
        expected = [ErrorCode.NON_NUMERIC_COORDINATE, ErrorCode.OK][: len(records)]
        assert b.error.tolist() == expected


NOT_VINS = [
    "x" * 30_000,
    V1[:16],
    V1 + "1",
    V1[:16] + " ",
    V1[:16] + "\n",
    V1 + "\n",
    V1[:15] + "🚗",
    "<b>LSVAU218</b>29",
    V1[:16].lower() + V1[16],
    V1[:16] + "I",
    V1[:16] + "O",
    V1[:16] + "Q",
    V1[:8] + ("1" if V1[8] != "1" else "2") + V1[9:],  # wrong check digit
]


@pytest.mark.parametrize("bad", NOT_VINS)
def test_a_vehicle_id_that_is_not_a_vin_is_rejected(bad: str) -> None:
    b = decode_records([rec(vin=bad), rec()])
    assert b.error.tolist() == [ErrorCode.INVALID_VIN, ErrorCode.OK]
    assert b.vehicle.tolist() == [None, V1]  # a hostile string is nobody's vehicle id


@pytest.mark.parametrize("bad", NOT_VINS)
def test_a_topic_whose_vehicle_is_not_a_vin_is_dead_lettered_whole(bad: str) -> None:
    hostile = Envelope(f"vehicles/{bad}/telemetry", orjson.dumps([rec(vin=bad)] * 3), 0.0)
    out = decode([hostile, env(rec())])
    assert [(d.source, d.reason) for d in out.dead] == [(0, "invalid-topic-vin")]
    assert len(out.dead[0].detail) < 40  # never echoes the id
    assert out.batch.source.tolist() == [1] and out.batch.ok.all()


def test_the_policy_may_waive_the_check_digit_but_not_the_alphabet() -> None:
    wrong_digit = V1[:8] + ("1" if V1[8] != "1" else "2") + V1[9:]
    b = decode_records([rec(vin=wrong_digit), rec(vin=V1[:16] + "O")], check_digit=False)
    assert b.error.tolist() == [ErrorCode.OK, ErrorCode.INVALID_VIN]
    topic = Envelope(f"vehicles/{wrong_digit}/telemetry", orjson.dumps(rec(vin=wrong_digit)), 0)
    assert decode([topic], check_digit=False).batch.ok.all()
    assert [d.reason for d in decode([topic]).dead] == ["invalid-topic-vin"]


@given(st.text(min_size=15, max_size=19) | st.from_regex(r"[0-9A-Z]{17}", fullmatch=True))
def test_only_valid_vins_are_vehicles(vin: str) -> None:
    b = decode_records([rec(vin=vin)])
    assert bool(b.ok[0]) == is_valid_vin(vin)


NOW = 1795867200.0  # the gateway's clock in the window tests
WINDOW = (NOW - 604800, NOW + 300)


@pytest.mark.parametrize(
    ("stamp", "windowed", "unwindowed"),
    [
        ("0001-01-01T00:00:00+00:00", ErrorCode.TIMESTAMP_TOO_OLD, ErrorCode.BAD_TIMESTAMP),
        ("1969-12-31T23:59:59Z", ErrorCode.TIMESTAMP_TOO_OLD, ErrorCode.BAD_TIMESTAMP),
        ("9999-12-31T23:59:59-23:59", ErrorCode.TIMESTAMP_IN_FUTURE, ErrorCode.BAD_TIMESTAMP),
        ("9999-12-31T23:59:59Z", ErrorCode.TIMESTAMP_IN_FUTURE, ErrorCode.BAD_TIMESTAMP),
        (1e12, ErrorCode.TIMESTAMP_IN_FUTURE, ErrorCode.BAD_TIMESTAMP),
        (-1, ErrorCode.TIMESTAMP_TOO_OLD, ErrorCode.BAD_TIMESTAMP),
        (NOW + 301, ErrorCode.TIMESTAMP_IN_FUTURE, ErrorCode.OK),
        (NOW - 604801, ErrorCode.TIMESTAMP_TOO_OLD, ErrorCode.OK),
        (NOW + 300, ErrorCode.OK, ErrorCode.OK),
        (NOW - 604800, ErrorCode.OK, ErrorCode.OK),
    ],
)
def test_times_outside_the_window_have_their_own_reasons(
    stamp: Any, windowed: ErrorCode, unwindowed: ErrorCode
) -> None:
    records = [rec(**{TIMESTAMP: stamp}), rec()]
    out = decode([env(records)], window=WINDOW)
    assert out.batch.error.tolist() == [windowed, ErrorCode.OK]
    assert decode([env(records)]).batch.error.tolist()[0] == unwindowed
    assert windowed is ErrorCode.OK or math.isnan(out.batch.time[0])


def test_overflowing_number_is_a_dead_letter() -> None:
    payload = orjson.dumps(rec()).replace(b"31.23", b"1e999")
    assert [d.reason for d in decode([env(None, raw=payload)]).dead] == ["not-json"]


def test_non_finite_coordinate_rejected() -> None:
    b = decode_records([rec(**{LATITUDE: float("nan")}), rec(**{LONGITUDE: float("inf")})])
    assert b.error.tolist() == [ErrorCode.NON_FINITE_COORDINATE] * 2
    assert math.isnan(b.lat[0]) and math.isnan(b.lon[1])


def test_record_without_position_is_valid_with_no_datum() -> None:
    r = rec()
    del r[LATITUDE], r[LONGITUDE]
    b = decode([env(r)]).batch
    assert b.ok.all()
    assert b.datum.tolist() == [Datum.NONE]
    assert np.isnan(b.lat).all()


def test_aliases_and_nested_objects_map_to_vss_paths() -> None:
    nested = {
        "Vehicle": {"VehicleIdentification": {"VIN": V1}, "Speed": 10.0},
        "gps_lat": 31.0,
        "gps_lon": 121.0,
        "ts": 1795867200,
    }
    aliases = {"gps_lat": LATITUDE, "gps_lon": LONGITUDE, "ts": TIMESTAMP}
    b = decode([env(nested)], aliases=aliases).batch
    assert b.ok.all(), ErrorCode(int(b.error[0]))
    assert (b.lat[0], b.lon[0], b.time[0]) == (31.0, 121.0, 1795867200.0)
    assert b.signals["Vehicle.Speed"].tolist() == [10.0]


def test_topic_vehicle() -> None:
    assert topic_vehicle(f"vehicles/{V1}/telemetry") == V1
    assert topic_vehicle("vehicles//telemetry") is None
    assert topic_vehicle("other") is None
    assert topic_vehicle(f"vehicles/{V1}x/telemetry") is None  # not a VIN: no vehicle
    assert topic_vehicle("vehicles/" + "x" * 30_000 + "/telemetry") is None


def test_decode_records_skips_topic_check() -> None:
    b = decode_records([rec(vin=V2)])
    assert b.ok.all()
    assert b.vehicle.tolist() == [V2]


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)


@given(st.lists(json_values | st.builds(rec), max_size=5))
def test_arbitrary_json_never_raises_and_every_payload_is_accounted_for(docs: list[Any]) -> None:
    envelopes = [env(None, raw=orjson.dumps(d)) for d in docs]
    out = decode(envelopes)
    dead = {d.source for d in out.dead}
    with_rows = set(out.batch.source.tolist())
    assert dead.isdisjoint(with_rows)
    assert dead | with_rows == set(range(len(docs)))
    ok = out.batch.ok
    assert np.isfinite(out.batch.time[ok]).all()
    assert all(isinstance(v, str) for v in out.batch.vehicle[ok])


def test_vins_invented_by_a_sender_keep_the_check_digit_cache_bounded_and_answers_right(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A sender cycling through made-up VINs (right shape, right or wrong check digit, or
    outside the alphabet) costs at most the cache's bound, and a VIN asked again after the
    cache started afresh is judged as the first time."""
    from gateway.pipeline import decode as dec
    from gateway.policy.codes import vin_check_digit

    monkeypatch.setattr(dec, "_VIN_DIGITS_MAX", 100)
    monkeypatch.setattr(dec, "_VIN_DIGITS", {})
    raw = "LSVAU2180N2183294"
    good = raw[:8] + vin_check_digit(raw) + raw[9:]
    assert dec.is_vin(good)
    answers: dict[str, bool] = {}
    for i in range(1_000):
        body = f"LSV{i:05d}X{i:08d}"[:17]
        digit = vin_check_digit(body)
        right = body[:8] + digit + body[9:]
        wrong = body[:8] + ("0" if digit != "0" else "1") + body[9:]
        for vin, want in ((right, True), (wrong, False), (right[:16] + "I", False)):
            got = dec.is_vin(vin)
            assert got is want, vin
            answers[vin] = got
            assert len(dec._VIN_DIGITS) <= 100
    other = "0" if good[8] != "0" else "1"
    assert dec.is_vin(good) and not dec.is_vin(good[:8] + other + good[9:])
    assert dec.is_vin(wrong, check_digit=False)
