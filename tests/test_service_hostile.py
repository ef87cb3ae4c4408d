"""The gateway's promise under hostile input, through decode -> decide -> commit with the
real SQLite store: anything a vehicle can send gets a clear error or a dead letter, never
fails a batch (a batch that raises is never acknowledged, so the broker would redeliver it,
and every other vehicle in it, for good), never poisons another vehicle's decisions, the
audit log or the state a restarted gateway loads."""

from __future__ import annotations

import functools
import sqlite3
import tempfile
import tracemalloc
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.audit.verify import verify_store
from gateway.model import Envelope
from gateway.service import Gateway
from gateway.state.snapshot import TripState
from gateway.store.vehicle_states import save_vehicle_state
from gateway.testing import make_vin
from gateway.vehicle_state import encode as encode_state
from gateway.vss import ALTITUDE, LATITUDE, LONGITUDE, TIMESTAMP, VIN
from simulators.fleet import Fleet, FleetConfig
from tests.test_commit import NOW, db, make_config, record

YEAR_9999 = 253402300799.0


def test_a_far_future_time_stored_before_the_window_does_not_silence_its_vehicle(
    tmp_path: Path,
) -> None:
    """A store written before record times were bounded may remember year 9999 as a
    vehicle's last shared or trip time: loading it must not silence the vehicle."""
    start = datetime.fromtimestamp(NOW, UTC) - timedelta(minutes=10)
    msgs = list(Fleet(FleetConfig(vehicles=1, start=start), seed=5).messages(300, 1.0))
    vin = msgs[0].topic.split("/")[1]
    clean = [Envelope(m.topic, m.payload, 0.0, i + 1) for i, m in enumerate(msgs)]
    views: list[Counter[str]] = []
    for name, poisoned in (("clean", False), ("poisoned", True)):
        cfg = make_config(tmp_path / name)
        gw = Gateway(cfg, clock=lambda: NOW)
        if poisoned:
            subs = list(gw.holder.current.subscribers)
            trip = TripState(YEAR_9999, 31.2, 121.4, 0.0, YEAR_9999, 31.2, 121.4)
            doc = encode_state(trip, dict.fromkeys(subs, YEAR_9999), ())
            with gw.store.transaction() as tx:
                save_vehicle_state(tx, {vin: doc}, 0)
        gw.store.close()
        gw = Gateway(cfg, clock=lambda: NOW)
        seen: Counter[str] = Counter()
        try:
            for i in range(0, len(clean), 20):
                seen.update(r.subscriber for r in gw.process(clean[i : i + 20]).outbox)
        finally:
            gw.store.close()
        views.append(seen)
    assert views[0]["sh-traffic"] > 0  # down-sampled to one record per 5 s
    assert views[1] == views[0]


V1, V2, BYSTANDER = make_vin(1), make_vin(2), make_vin(3)
"""Hostile input names V1 and V2 (in topics, fields and values); it never names BYSTANDER."""

KEYS = [VIN, TIMESTAMP, LATITUDE, LONGITUDE, ALTITUDE, "msg_id", "Vehicle.Speed", "Vehicle", "",
        "Vehicle.CurrentLocation.Heading", "Vehicle.CurrentLocation.HorizontalAccuracy",
        "Vehicle.TraveledDistance", "Vehicle.StartTime", "Vehicle.OBD.DTCList", "gps.lat",
        "Vehicle.Driver.Identifier.Subject", "Vehicle.Cabin.Camera.DriverMonitor.Image",
        "Vehicle.Powertrain.TractionBattery.StateOfCharge.Current", "Vehicle.IsMoving"]  # fmt: skip
specials = st.sampled_from(
    [V1, V2, V1.lower(), V1 + " ", "x" * 3000, NOW - 60, str(NOW - 60), NOW * 1000, 1e308,
     -1e308, -0.0, 31.23, 121.47, True, False, [31.2], [31.2, 121.4], [], {},
     "2026-11-28T12:00:00Z", "9999-12-31T23:59:59Z", "0001-01-01T00:00:00+23:59", 2**64 - 1]
)  # fmt: skip
values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=8)
    | specials,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(KEYS), inner),
    max_leaves=6,
)
records = st.builds(
    lambda vin, over: {**record(vin, msg_id="a"), **over},
    st.sampled_from([V1, V2]),
    st.dictionaries(st.sampled_from(KEYS), values, max_size=3),
)
payloads = st.one_of(
    st.builds(orjson.dumps, records | st.lists(records | values, max_size=4) | values),
    st.binary(max_size=40),
    st.sampled_from(
        [b"\xef\xbb\xbf{}", b'{"a": NaN}', b"[" * 2000 + b"]" * 2000, b'{"a":1,"a":2}',
         b'"\\ud800"', b"\xff\xfe", b"1e400", b"x" * 300_000]
    ),
)  # fmt: skip
topics = st.sampled_from(
    [f"vehicles/{V1}/telemetry", f"vehicles/{V2}/telemetry", "vehicles/+/telemetry",
     f"vehicles/{V1}\0/telemetry", "vehicles/../telemetry", "", f"vehicles/{V1.lower()}/x",
     "vehicles/" + "<x>" * 200 + "/telemetry", f"vehicles/{V1}/telemetry/{V2}"]
) | st.text(max_size=12)  # fmt: skip


def bystander() -> Envelope:
    return Envelope(f"vehicles/{BYSTANDER}/telemetry", orjson.dumps(record(BYSTANDER)), 0.0, 0)


def decided(gw: Gateway, con: sqlite3.Connection, vin: str) -> Counter[tuple[str, str]]:
    """A vehicle's audited decisions, by subscriber."""
    rows = con.execute(
        "select subscriber, decision from audit_entries where vehicle = ?", (gw.vehicle_ref(vin),)
    )
    return Counter(rows)


@functools.cache
def alone() -> Counter[tuple[str, str]]:
    """The bystander's decisions when it is alone."""
    with tempfile.TemporaryDirectory() as tmp:
        cfg = make_config(Path(tmp))
        gw = Gateway(cfg, clock=lambda: NOW)
        try:
            gw.process([bystander()])
        finally:
            gw.store.close()
        return decided(gw, db(cfg), BYSTANDER)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(topics, payloads), min_size=1, max_size=5), st.booleans())
def test_hostile_input_never_fails_a_batch_poisons_a_vehicle_or_the_log(
    hostile: list[tuple[str, bytes]], with_bystander: bool
) -> None:
    batch = [Envelope(t, p, 0.0, i + 1) for i, (t, p) in enumerate(hostile)]
    batch += [bystander()] if with_bystander else []
    with tempfile.TemporaryDirectory() as tmp:
        cfg = make_config(Path(tmp))
        gw = Gateway(cfg, clock=lambda: NOW)
        try:
            first = gw.process(batch)  # a batch that raises is redelivered for good
            again = gw.process(batch)  # the broker redelivers: nothing is decided twice
            gw.audit.checkpoint(force=True)
            reports = verify_store(gw.store, gw.keys.verifiers(gw.origin))
        finally:
            gw.store.close()
        con = db(cfg)
        assert decided(gw, con, BYSTANDER) == (alone() if with_bystander else Counter())
        assert again.entries == 0
        assert [r.error for r in reports] == [None]
        bodies = [b for (b,) in con.execute("select body from audit_entries") if b is not None]
    notices = [r for r in first.outbox if not r.subscriber]
    assert len(notices) == first.deadletters
    for text in [r.topic.encode() + r.payload for r in first.outbox] + bodies:
        for vin in (V1, V2, BYSTANDER):  # no VIN in clear where anyone can read
            assert vin.encode() not in text.upper()
    for r in notices:  # a notice says why, never whose nor what the vehicle sent
        assert orjson.loads(r.payload).keys() == {"reason", "digest", "audit_seq"}


def test_a_batch_too_wide_for_its_columns_is_decided_in_parts_in_bounded_memory(
    tmp_path: Path,
) -> None:
    """Each field name is a column as long as the batch: 200 payloads of 250 names each
    beside two arrays of 1,000 records took 900 MB to decode as one batch."""
    topic = f"vehicles/{V1}/telemetry"
    wide = [
        Envelope(
            topic, orjson.dumps(record(msg_id=str(j), **{f"k{j}_{i}": 0 for i in range(250)})), 0.0
        )
        for j in range(200)
    ]
    arrays = [
        Envelope(topic, orjson.dumps([record(msg_id=f"r{j}-{i}") for i in range(1000)]), 0.0)
        for j in range(2)
    ]
    decisions: list[Counter[tuple[str, str]]] = []
    for name, batches in (("apart", [[e] for e in arrays + wide]), ("together", [arrays + wide])):
        gw = Gateway(make_config(tmp_path / name), clock=lambda: NOW)
        tracemalloc.start()
        try:
            seen: Counter[tuple[str, str]] = Counter()
            for batch in batches:
                seen.update(gw.process(batch).decisions)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
            gw.store.close()
        decisions.append(seen)
        assert peak < 250_000_000, f"{name}: {peak:,} bytes"
    assert decisions[1] == decisions[0]  # nothing lost, nothing decided differently
    assert sum(decisions[0].values()) >= 2200
