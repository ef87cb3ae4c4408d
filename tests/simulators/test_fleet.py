"""The fleet generator: payload format, kinematics, trips, determinism, traffic mix, zones.

Checks are made on the published bytes with simple per-sample references (haversine,
initial bearing) written here, not with the simulator's own geometry.
"""

from __future__ import annotations

import itertools
import json
import math
import re
from collections import Counter, defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway.errors import ConfigError
from gateway.geo.zones import ZoneSet, load_zones
from simulators.fleet import Fleet, FleetConfig, GenerationStats, Kind, Message
from simulators.scenario import Batches, Consent, Faults, LatLon, Scenario, Trips, ZoneCrossing
from simulators.vin import is_valid_vin

DATA = Path(__file__).parent / "data"
ZONES = DATA / "zones.geojson"
NO_ZONES = ZoneCrossing(zones=[])

FIELDS = {
    "Vehicle.VehicleIdentification.VIN",
    "Vehicle.CurrentLocation.Timestamp",
    "Vehicle.CurrentLocation.Latitude",
    "Vehicle.CurrentLocation.Longitude",
    "Vehicle.CurrentLocation.Altitude",
    "Vehicle.CurrentLocation.Heading",
    "Vehicle.Speed",
    "Vehicle.TraveledDistance",
    "Vehicle.Acceleration.Longitudinal",
    "Vehicle.Powertrain.TractionBattery.StateOfCharge.Current",
    "Vehicle.LowVoltageSystemState",
    "msg_id",
}
ODO_RES = 0.12  # metres: odometer sent in km to 4 decimals, positions to 7 decimals
TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


def haversine_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    r = 6_371_008.8
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * r * math.asin(math.sqrt(a))


def bearing_deg(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dl = math.radians(lon2 - lon1)
    y = math.sin(dl) * math.cos(p2)
    x = math.cos(p1) * math.sin(p2) - math.sin(p1) * math.cos(p2) * math.cos(dl)
    return math.degrees(math.atan2(y, x)) % 360


def angle_diff(a: float, b: float) -> float:
    return abs((a - b + 180) % 360 - 180)


def epoch(ts: str) -> float:
    return datetime.strptime(ts, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()


def clean(vehicles: int = 10, **scenario: Any) -> FleetConfig:
    scenario.setdefault("zone_crossing", NO_ZONES)
    return FleetConfig(vehicles=vehicles, scenario=Scenario(**scenario))


def tracks(messages: list[Message]) -> dict[str, list[dict[str, Any]]]:
    """Samples per topic VIN, in the order published (valid messages only)."""
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for m in messages:
        assert m.kind is Kind.VALID
        body = orjson.loads(m.payload)
        out[m.topic.split("/")[1]].extend(body if isinstance(body, list) else [body])
    return out


def test_payload_format_and_topics() -> None:
    fleet = Fleet(clean(vehicles=5), seed=3)
    messages = list(fleet.messages(30, 1))
    assert len(messages) == 5 * 30
    for m in messages:
        vin = m.topic.split("/")[1]
        assert m.topic == f"vehicles/{vin}/telemetry"
        assert is_valid_vin(vin)
        sample = orjson.loads(m.payload)
        assert set(sample) == FIELDS
        assert sample["Vehicle.VehicleIdentification.VIN"] == vin
        assert TIMESTAMP.fullmatch(sample["Vehicle.CurrentLocation.Timestamp"])
        assert 30.9 < sample["Vehicle.CurrentLocation.Latitude"] < 31.5
        assert 121.1 < sample["Vehicle.CurrentLocation.Longitude"] < 121.8
        assert 0 <= sample["Vehicle.CurrentLocation.Heading"] < 360
        assert 0 <= sample["Vehicle.Speed"] < 100
        assert 0 < sample["Vehicle.Powertrain.TractionBattery.StateOfCharge.Current"] <= 100
        assert sample["Vehicle.LowVoltageSystemState"] in ("ON", "OFF")
        assert sample["msg_id"].startswith(f"{vin}-")
        assert m.samples == 1
    ids = [orjson.loads(m.payload)["msg_id"] for m in messages]
    assert len(set(ids)) == len(ids)
    first = orjson.loads(messages[0].payload)["Vehicle.CurrentLocation.Timestamp"]
    assert first == "2026-11-28T12:00:00.000Z"
    assert [m.at for m in messages] == sorted(m.at for m in messages)


def check_kinematics(track: list[dict[str, Any]], dt: float, exact_steps: bool) -> int:
    """Assert sample-to-sample consistency; returns how many steps were straight."""
    straight = 0
    for prev, cur in itertools.pairwise(track):
        t0, t1 = (
            epoch(prev["Vehicle.CurrentLocation.Timestamp"]),
            epoch(cur["Vehicle.CurrentLocation.Timestamp"]),
        )
        gap = t1 - t0
        assert gap >= dt - 1e-3
        p = (prev["Vehicle.CurrentLocation.Latitude"], prev["Vehicle.CurrentLocation.Longitude"])
        c = (cur["Vehicle.CurrentLocation.Latitude"], cur["Vehicle.CurrentLocation.Longitude"])
        chord = haversine_m(*p, *c)
        travelled = (cur["Vehicle.TraveledDistance"] - prev["Vehicle.TraveledDistance"]) * 1000
        v0, v1 = prev["Vehicle.Speed"] / 3.6, cur["Vehicle.Speed"] / 3.6
        a1 = cur["Vehicle.Acceleration.Longitudinal"]
        assert -3.0 - 0.01 <= a1 <= 2.0 + 0.01
        assert travelled >= -1e-4
        # the straight line between samples is never longer than the road driven
        assert chord <= travelled + ODO_RES
        if abs(gap - dt) > 1e-3:  # a key-off pause: the vehicle stood still
            assert prev["Vehicle.LowVoltageSystemState"] == "OFF"
            assert v0 == 0 and v1 == 0 and chord < 0.05 and travelled < 1e-3
            continue
        # speed never exceeds what the step allows, and odometer = integral of speed
        assert travelled <= max(v0, v1) * dt + 3.0 * dt * dt + 0.1
        if exact_steps:
            assert travelled == pytest.approx((v0 + v1) / 2 * dt, abs=ODO_RES + 0.003 * dt)
            assert (v1 - v0) / dt == pytest.approx(a1, abs=0.006 / dt + 0.006)
            if v1 > 0 and v0 > 0:  # jerk-limited (a stop ends braking at once)
                a0 = prev["Vehicle.Acceleration.Longitudinal"]
                assert abs(a1 - a0) <= 2.5 * dt + 0.011
        same_heading = angle_diff(
            prev["Vehicle.CurrentLocation.Heading"], cur["Vehicle.CurrentLocation.Heading"]
        )
        if same_heading < 0.05 and chord > 5.0:
            straight += 1
            assert chord == pytest.approx(travelled, rel=0.001, abs=ODO_RES)
            assert angle_diff(bearing_deg(*p, *c), cur["Vehicle.CurrentLocation.Heading"]) < 0.5
    return straight


@pytest.mark.parametrize(("rate", "exact"), [(1.0, True), (2.0, True), (0.2, False)])
def test_kinematics_are_consistent(rate: float, exact: bool) -> None:
    config = clean(vehicles=12, trips=Trips(duration_s=(60, 200), pause_s=(20, 40)))
    fleet = Fleet(config, seed=11)
    by_vin = tracks(list(fleet.messages(600, rate)))
    assert len(by_vin) == 12
    straight = sum(check_kinematics(track, 1 / rate, exact) for track in by_vin.values())
    steps = sum(len(t) - 1 for t in by_vin.values())
    assert straight > steps * (0.5 if rate >= 1 else 0.2)  # most steps are on one segment
    speeds = [s["Vehicle.Speed"] for t in by_vin.values() for s in t]
    assert max(speeds) > 40  # they do drive, at city speeds
    assert max(speeds) < 85


def test_trips_end_with_key_off_then_pause_then_new_trip() -> None:
    config = clean(vehicles=6, trips=Trips(duration_s=(40, 80), pause_s=(30, 60)))
    stats = GenerationStats()
    by_vin = tracks(list(Fleet(config, seed=5).messages(400, 1, stats)))
    offs = 0
    for track in by_vin.values():
        for prev, cur in itertools.pairwise(track):
            gap = epoch(cur["Vehicle.CurrentLocation.Timestamp"]) - epoch(
                prev["Vehicle.CurrentLocation.Timestamp"]
            )
            if prev["Vehicle.LowVoltageSystemState"] == "OFF":
                offs += 1
                assert prev["Vehicle.Speed"] == 0
                assert 30 <= gap <= 61
                assert cur["Vehicle.LowVoltageSystemState"] == "ON"
                assert cur["Vehicle.Speed"] == 0
                assert cur["Vehicle.TraveledDistance"] == prev["Vehicle.TraveledDistance"]
                assert cur["Vehicle.CurrentLocation.Latitude"] == pytest.approx(
                    prev["Vehicle.CurrentLocation.Latitude"], abs=1e-7
                )
            else:
                assert gap == pytest.approx(1.0, abs=1e-3)
    assert offs >= 6
    assert stats.key_offs >= offs
    assert stats.trips == 6 + offs  # every pause ended in a new trip


def test_same_seed_same_bytes_other_seed_other_bytes() -> None:
    config = clean(
        vehicles=8,
        faults=Faults(malformed=0.05, duplicate=0.05, out_of_order=0.05, spoofed_vin=0.05),
        batches=Batches(share=0.1),
    )
    a = list(Fleet(config, seed=42).messages(60, 1))
    b = list(Fleet(config, seed=42).messages(60, 1))
    assert a == b
    fleet = Fleet(config, seed=42)
    assert list(fleet.messages(60, 1)) == list(fleet.messages(60, 1))
    c = list(Fleet(config, seed=43).messages(60, 1))
    assert [m.payload for m in c] != [m.payload for m in a]
    assert Fleet(config, seed=43).vins != Fleet(config, seed=42).vins


def test_traffic_mix_does_not_change_trajectories() -> None:
    plain = list(Fleet(clean(vehicles=5), seed=9).messages(120, 1))
    mixed_config = clean(
        vehicles=5,
        faults=Faults(malformed=0.2, duplicate=0.2, out_of_order=0.2, spoofed_vin=0.2),
        batches=Batches(share=0.3),
    )
    mixed = list(Fleet(mixed_config, seed=9).messages(120, 1))
    samples: dict[str, dict[str, Any]] = {}
    for m in mixed:
        if m.kind in (Kind.VALID, Kind.OUT_OF_ORDER):
            body = orjson.loads(m.payload)
            for s in body if isinstance(body, list) else [body]:
                samples[s["msg_id"]] = s
    matched = 0
    for m in plain:
        s = orjson.loads(m.payload)
        if s["msg_id"] in samples:
            assert samples[s["msg_id"]] == s
            matched += 1
    assert matched > len(plain) * 0.4


def classify(messages: list[Message]) -> None:
    """Check every message really is what its kind says."""
    seen: set[tuple[str, bytes]] = set()
    newest: dict[str, float] = {}
    for m in messages:
        vin = m.topic.split("/")[1]
        if m.kind is Kind.DUPLICATE:
            assert (m.topic, m.payload) in seen
            continue
        assert m.kind is Kind.MALFORMED or (m.topic, m.payload) not in seen
        seen.add((m.topic, m.payload))
        if m.kind is Kind.MALFORMED:
            assert m.samples == 0 or m.payload.startswith(b"[")
            continue
        body = orjson.loads(m.payload)
        records = body if isinstance(body, list) else [body]
        assert m.samples == len(records)
        latest = max(epoch(r["Vehicle.CurrentLocation.Timestamp"]) for r in records)
        vins = {r["Vehicle.VehicleIdentification.VIN"] for r in records}
        if m.kind is Kind.SPOOFED:
            assert vins != {vin} and len(vins) == 1 and is_valid_vin(vins.pop())
        else:
            assert vins == {vin}
        if m.kind is Kind.OUT_OF_ORDER:
            assert latest < newest[vin]
        elif m.kind is Kind.VALID:
            assert latest > newest.get(vin, -math.inf)
        if m.kind is not Kind.SPOOFED:  # the gateway orders what it accepts
            newest[vin] = max(latest, newest.get(vin, -math.inf))


def test_traffic_mix_rates_are_honoured() -> None:
    faults = Faults(malformed=0.05, duplicate=0.08, out_of_order=0.06, spoofed_vin=0.04)
    config = clean(
        vehicles=100,
        faults=faults,
        batches=Batches(share=0.1, size=(3, 6)),
        trips=Trips(duration_s=(3000, 3600)),  # no key-off: every vehicle sends every tick
    )
    stats = GenerationStats()
    messages = list(Fleet(config, seed=2).messages(120, 1, stats))
    classify(messages)
    kinds = Counter(m.kind for m in messages)
    assert kinds == stats.messages
    originals = len(messages) - kinds[Kind.DUPLICATE]

    def near(count: int, n: int, p: float) -> bool:  # within 5 binomial sigmas
        return abs(count - n * p) <= 5 * math.sqrt(n * p * (1 - p)) + 1

    assert near(kinds[Kind.MALFORMED], originals, 0.05)
    assert near(kinds[Kind.SPOOFED], originals, 0.04)
    assert near(kinds[Kind.OUT_OF_ORDER], originals, 0.06)
    assert near(kinds[Kind.DUPLICATE], originals, 0.08)
    batches = [m for m in messages if m.kind is not Kind.DUPLICATE and m.payload[:1] == b"["]
    assert near(stats.batch_messages, originals, 0.1)
    assert len(batches) <= stats.batch_messages
    for m in batches:
        if m.kind is not Kind.MALFORMED:
            assert 1 <= len(orjson.loads(m.payload)) <= 6
    assert stats.samples == 100 * 120


def test_malformed_payloads_cover_every_breakage() -> None:
    config = clean(vehicles=20, faults=Faults(malformed=1.0))
    messages = list(Fleet(config, seed=4).messages(20, 1))
    assert all(m.kind is Kind.MALFORMED for m in messages)
    undecodable = 0
    for m in messages:
        try:
            body = orjson.loads(m.payload)
        except orjson.JSONDecodeError:
            undecodable += 1
            continue
        if not isinstance(body, dict):
            continue
        broken = (
            "Vehicle.CurrentLocation.Latitude" not in body
            or not isinstance(body["Vehicle.CurrentLocation.Latitude"], float)
            or abs(body["Vehicle.CurrentLocation.Latitude"]) > 90
            or "Vehicle.VehicleIdentification.VIN" not in body
            or not TIMESTAMP.fullmatch(body.get("Vehicle.CurrentLocation.Timestamp", ""))
            or body["Vehicle.CurrentLocation.Timestamp"].startswith("2026-13")
        )
        assert broken, body
    assert undecodable > 0


def test_consent_share_is_exact_and_reported() -> None:
    fleet = Fleet(clean(vehicles=50, consent=Consent(share=0.3)), seed=1)
    assert len(fleet.consenting_vins) == 15
    assert sorted(fleet.consenting_vins + fleet.non_consenting_vins) == sorted(fleet.vins)
    assert len(set(fleet.vins)) == 50
    again = Fleet(clean(vehicles=50, consent=Consent(share=0.3)), seed=1)
    assert fleet.consenting_vins == again.consenting_vins


def test_zone_crossing_share() -> None:
    zones = load_zones(ZONES)
    # the same zones grown by the clearance (less 2 m for the simulator's local frame)
    collection = orjson.loads(ZONES.read_bytes())
    for feature in collection["features"]:
        feature["properties"]["buffer_m"] = feature["properties"].get("buffer_m", 0) + 98
    clearance = ZoneSet.from_geojson(collection)
    crossing = ZoneCrossing(share=0.25, zones=[ZONES], clearance_m=100)
    fleet = Fleet(FleetConfig(vehicles=16, scenario=Scenario(zone_crossing=crossing)), seed=8)
    crossers = set(fleet.zone_crossing_vins)
    assert len(crossers) == 4
    assert 4 <= (~fleet.allowed).sum() < fleet.network.n_edges / 4  # roads near zones closed
    by_vin = tracks(list(fleet.messages(180, 2)))
    for vin, track in by_vin.items():
        lat = [s["Vehicle.CurrentLocation.Latitude"] for s in track]
        lon = [s["Vehicle.CurrentLocation.Longitude"] for s in track]
        inside = zones.points_in_zones(lat, lon).masked
        if vin in crossers:
            assert inside.any(), vin
        else:
            assert not clearance.points_in_zones(lat, lon).masked.any(), vin


def test_zone_crossing_targets_without_zone_files() -> None:
    target = LatLon(lat=31.27, lon=121.55)
    crossing = ZoneCrossing(share=1.0, zones=[], targets=[target])
    fleet = Fleet(FleetConfig(vehicles=3, scenario=Scenario(zone_crossing=crossing)), seed=2)
    for track in tracks(list(fleet.messages(120, 2))).values():
        closest = min(
            haversine_m(
                s["Vehicle.CurrentLocation.Latitude"],
                s["Vehicle.CurrentLocation.Longitude"],
                target.lat,
                target.lon,
            )
            for s in track
        )
        assert closest < 10


def test_zone_crossing_without_any_zone_is_a_config_error() -> None:
    crossing = ZoneCrossing(share=0.5, zones=[])
    config = FleetConfig(vehicles=4, scenario=Scenario(zone_crossing=crossing), source="x.yaml")
    with pytest.raises(ConfigError, match=r"x\.yaml: zone_crossing\.share: .*no zone file"):
        Fleet(config)


@pytest.mark.parametrize(
    ("duration", "rate"), [(0, 1), (-5, 1), (math.inf, 1), (10, 0), (10, 101), (10, -1)]
)
def test_bad_duration_or_rate(duration: float, rate: float) -> None:
    with pytest.raises(ValueError, match=r"duration|rate"):
        Fleet(clean(vehicles=1)).messages(duration, rate)


def test_default_bundle_zones_are_crossed_and_avoided() -> None:
    from gateway.resources import default_policy_dir

    zones = load_zones(sorted(default_policy_dir().glob("zones*.geojson")))
    assert len(zones) > 0
    scenario = Scenario(zone_crossing=ZoneCrossing(share=0.5))
    fleet = Fleet(FleetConfig(vehicles=12, scenario=scenario), seed=3)
    crossers = set(fleet.zone_crossing_vins)
    assert len(crossers) == 6
    for vin, track in tracks(list(fleet.messages(120, 1))).items():
        lat = [s["Vehicle.CurrentLocation.Latitude"] for s in track]
        lon = [s["Vehicle.CurrentLocation.Longitude"] for s in track]
        assert zones.points_in_zones(lat, lon).masked.any() == (vin in crossers), vin


def test_first_seq_numbers_the_first_message_of_each_vehicle() -> None:
    from simulators.fleet import Fleet, FleetConfig

    fleet = Fleet(FleetConfig(vehicles=3, first_seq=1000), seed=1)
    ids = [json.loads(m.payload)["msg_id"] for m in fleet.messages(2.0, 1.0)]
    assert sorted(ids) == sorted(f"{v}-{n}" for v in fleet.vins for n in (1000, 1001))
