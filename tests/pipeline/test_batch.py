"""The batch stage's pure parts: dead inputs, record keys, first sight, consent references.

The stage as a whole (with the store's look-ups) is exercised by tests/test_service.py."""

from __future__ import annotations

from pathlib import Path

import orjson

from gateway.keys import KeyRing, init_keys, rotate_keys
from gateway.model import Envelope
from gateway.pipeline.batch import Keying, consent_refs, dead_id, dead_inputs
from gateway.pipeline.decode import decode, decode_records
from gateway.pipeline.dedup import first_sight, fresh_rows, record_keys
from gateway.testing import make_vin
from gateway.vss import TIMESTAMP, VIN

NOW = 1_780_000_000.0


def keying(ring: KeyRing) -> Keying:
    return Keying(ring, ring.vehicle_ref, None, NOW)


def test_dead_inputs_name_each_unusable_input_stably_and_by_its_place(tmp_path: Path) -> None:
    ring = init_keys(tmp_path / "keys")
    vin = make_vin(1)
    topic = f"vehicles/{vin}/telemetry"
    good = {VIN: vin, TIMESTAMP: "2026-05-28T00:00:00Z"}
    broken = Envelope(topic, b"{not json", 0.0, 1)
    rows = Envelope(topic, orjson.dumps([good, {VIN: vin}, {VIN: vin}]), 0.0, 2)
    envelopes = [broken, rows]
    decoded = decode(envelopes)
    dead = dead_inputs(envelopes, decoded, NOW, keying(ring))
    assert [d.message_id for d in dead] == [
        dead_id(ring, broken),
        f"{dead_id(ring, rows)}:1",
        f"{dead_id(ring, rows)}:2",
    ]
    assert all(d.vehicle_ref == ring.vehicle_ref(vin) and d.time == NOW for d in dead)
    assert dead[0].payload == broken.payload and dead[1].payload == rows.payload
    # a redelivery (another broker message id, another batch) gets the same ids
    again = dead_inputs([rows], decode([rows]), NOW + 1, keying(ring))
    assert [d.message_id for d in again] == [d.message_id for d in dead[1:]]
    assert dead_id(ring, broken).startswith("dl:") and vin not in dead_id(ring, broken)


def test_a_dead_input_on_a_topic_without_a_vin_has_no_vehicle(tmp_path: Path) -> None:
    ring = init_keys(tmp_path / "keys")
    env = Envelope("elsewhere", b"[]]", 0.0, 1)
    (dead,) = dead_inputs([env], decode([env]), NOW, keying(ring))
    assert dead.vehicle_ref is None


def test_record_keys_tell_records_apart_by_vehicle_and_msg_id() -> None:
    a, b = make_vin(1), make_vin(2)
    stamp = "2026-05-28T00:00:00Z"
    records = [
        {VIN: a, TIMESTAMP: stamp, "msg_id": "1"},
        {VIN: a, TIMESTAMP: stamp, "msg_id": "1"},
        {VIN: a, TIMESTAMP: stamp, "msg_id": "2"},
        {VIN: b, TIMESTAMP: stamp, "msg_id": "1"},
    ]
    keys = record_keys(decode_records(records), [0, 1, 2, 3], str.lower)
    assert keys[0] == keys[1]
    assert len({keys[0], keys[2], keys[3]}) == 3
    assert [k[0] for k in keys] == [a.lower()] * 3 + [b.lower()]


def test_only_the_first_unseen_of_each_key_is_kept() -> None:
    keys = [("v", "1"), ("v", "2"), ("v", "1"), ("v", "3"), ("v", "3")]
    seen = {("v", "2")}
    assert first_sight(keys, seen) == [True, False, False, True, False]
    fresh, fresh_keys = fresh_rows([10, 11, 12, 13, 14], keys, seen)
    assert fresh == [10, 13]
    assert fresh_keys == [("v", "1"), ("v", "3")]


def test_consents_are_looked_up_under_every_hmac_key_generation(tmp_path: Path) -> None:
    ring = init_keys(tmp_path / "keys")
    vin = make_vin(3)
    vin_of = {ring.vehicle_ref(vin): vin}
    assert consent_refs(ring, vin_of) == vin_of
    rotated = rotate_keys(tmp_path / "keys")
    now_of = {rotated.vehicle_ref(vin): vin}
    refs = consent_refs(rotated, now_of)
    assert refs == {**now_of, ring.vehicle_ref(vin): vin}
    assert len(refs) == 2
