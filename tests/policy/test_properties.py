"""Property tests of the decision engine (hypothesis).

* A simple per-record reference decide (below: one record, one subscriber at a time, with
  scalar geometry and plain dictionaries for the state) agrees with the columnar engine on
  random batches: verdicts, rule ids and outputs.
* Cutting a stream into batches (carrying the state) gives the same outcome as one batch.
* No view of a subscriber without a valid qualification ever contains a WGS-84 coordinate,
  a position that is not the datum-transformed centre of a grid cell at least as coarse as
  the floor, or a location-derived value finer than the view allows.
* Over random fleets, views and batch cuts: no identifier a subscriber reads (topic segment,
  vehicle field, message id), no value that carries over between trips (odometer, energy
  level) and no position within ``pseudonym_trim_m`` of a trip's ends appears in two trips
  of a vehicle whose trips it must not link.
* A record without a position obeys its trip's last known zone, or where its vehicle was
  last seen (and loses its location-derived fields when no position is known).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Iterable
from datetime import UTC, date, datetime
from types import MappingProxyType
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pyproj import Geod

from gateway.commit import view_topic
from gateway.geo.altitude import coarsen_altitude
from gateway.geo.datum import transform
from gateway.geo.grid import cell_centres, format_cell_id, parse_cell_id, snap, split_cell_id
from gateway.geo.zones import ZoneLevel
from gateway.model import Batch, Consent
from gateway.pipeline.classify import value_fits
from gateway.pipeline.decide import Decisions, Verdict
from gateway.pipeline.decode import decode_records
from gateway.pipeline.run import evaluate
from gateway.pipeline.shape import (
    Shaped,
    keyed_pseudonym,
    trip_pseudonym,
)
from gateway.policy.bundle import PolicyBundle
from gateway.policy.loader import load_bundle
from gateway.policy.rules import RuleId
from gateway.policy.schema import (
    BEIJING,
    AltitudeMode,
    DerivedMode,
    ExportDataClass,
    FieldCategory,
    IdentifierMode,
    LegalBasis,
    LegalBasisKind,
    NoConsentFallback,
    OutputDatum,
    beijing_date,
)
from gateway.policy.view_schema import VIEW_SCHEMA, coordinate_names
from gateway.state.snapshot import (
    KEY_OFF_SIGNAL,
    KEY_OFF_VALUES,
    ConsentBook,
    CrossBorderCount,
    HeldSet,
    HeldView,
    StateSnapshot,
    TripState,
)
from gateway.vss import ALTITUDE, LATITUDE, TIMESTAMP, VIN

KEY_PREFIX = b"property-test:"
VINS = [
    "LSVAU2181P2100001",
    "LFV2A21K9R4100002",
    "LGXCE6CB2R0100003",
    "LSJA24U33R5100005",
    "LVHRU585XN6100077",
]
PLACES = [
    (31.300, 121.552),  # example-prohibited-1
    (31.174, 121.400),  # example-sensitive-1
    (31.249, 121.329),  # example-sensitive-2
    (31.2304, 121.4737),  # city
    (31.05, 121.75),  # suburbs
]
PURPOSES = ["navigation-map", "usage-based-insurance", "traffic-management", "product-quality"]
T0 = datetime(2026, 1, 15, 8, 0, tzinfo=BEIJING).timestamp()
_OUTSIDE = {FieldCategory.LOCATION, FieldCategory.ALTITUDE, FieldCategory.VEHICLE_ID}


def keys(subscriber: str) -> bytes:
    return KEY_PREFIX + subscriber.encode().ljust(18, b"_")


@pytest.fixture(scope="module")
def bundles() -> dict[str, PolicyBundle]:
    base = load_bundle()
    oem = base.subscribers["oem-hq-de"]
    extra = (
        LegalBasis(
            kind=LegalBasisKind.GEODATA_EXPORT_APPROVAL,
            id="GEO-1",
            covers=(ExportDataClass.GEOGRAPHIC_DATA,),
            expires=date(2027, 6, 30),
        ),
        LegalBasis(
            kind=LegalBasisKind.STANDARD_CONTRACT,
            id="SCC-SPI",
            covers=(ExportDataClass.SENSITIVE_PERSONAL_INFORMATION,),
            expires=date(2028, 6, 30),
        ),
    )
    subs = dict(base.subscribers)
    subs["oem-hq-de"] = oem.model_copy(update={"legal_bases": (*oem.legal_bases, *extra)})
    vin_view = subs["insureco-ubi"].view.model_copy(
        update={
            "identifier": IdentifierMode.VIN,
            "fields": (*subs["insureco-ubi"].view.fields, VIN),
            "no_consent": NoConsentFallback.TRIP_PSEUDONYM,
        }
    )
    subs["insureco-ubi"] = subs["insureco-ubi"].model_copy(update={"view": vin_view})
    # 1 m altitude steps while qualified; the altitude floor once the qualification expires
    mapco = subs["mapco-nav"]
    fine_alt = mapco.view.model_copy(
        update={"altitude": AltitudeMode.COARSEN, "altitude_step_m": 1.0}
    )
    early = tuple(q.model_copy(update={"expires": date(2027, 1, 1)}) for q in mapco.qualifications)
    subs["mapco-nav"] = mapco.model_copy(update={"view": fine_alt, "qualifications": early})
    return {
        "default": base,
        "variant": dataclasses.replace(base, subscribers=MappingProxyType(subs)),
    }


# --- random input ------------------------------------------------------------------------------


@st.composite
def streams(draw: Any) -> dict[str, Any]:
    """Records of a few vehicles in time order, with a decision time and a starting state."""
    n = draw(st.integers(min_value=1, max_value=24))
    records: list[Any] = []
    t = T0 + draw(st.floats(min_value=-3e7, max_value=9e7))
    for _ in range(n):
        t += draw(st.sampled_from([0.0, 1.0, 2.5, 7.0, 31.0, 200.0, 700.0]))
        vin = draw(st.sampled_from(VINS))
        rec: dict[str, Any] = {VIN: vin, TIMESTAMP: t}
        if draw(st.integers(0, 9)) > 0:
            base = draw(st.sampled_from(PLACES))
            spread = draw(st.sampled_from([0.0, 0.0005, 0.002, 0.01]))
            dlat = draw(st.floats(min_value=-spread, max_value=spread))
            dlon = draw(st.floats(min_value=-spread, max_value=spread))
            rec[LATITUDE] = base[0] + dlat
            rec["Vehicle.CurrentLocation.Longitude"] = base[1] + dlon
        if draw(st.booleans()):
            rec[ALTITUDE] = draw(st.floats(min_value=-50, max_value=500))
        for path in (
            "Vehicle.Speed",
            "Vehicle.CurrentLocation.Heading",
            "Vehicle.TraveledDistance",
        ):
            if draw(st.booleans()):
                rec[path] = draw(
                    st.one_of(st.floats(min_value=-1e4, max_value=1e4), st.just("fast"))
                )
        if draw(st.integers(0, 3)) == 0:
            rec["Vehicle.AngularVelocity.Yaw"] = draw(st.floats(min_value=-90, max_value=90))
        if draw(st.booleans()):
            rec["Vehicle.Powertrain.TractionBattery.StateOfCharge.Current"] = 50.0
        if draw(st.booleans()):
            rec["Vehicle.Body.Lights.Hazard.IsSignaling"] = draw(st.booleans())
        if draw(st.integers(0, 5)) == 0:
            rec[KEY_OFF_SIGNAL] = "OFF"
        if draw(st.integers(0, 4)) == 0:
            rec["oem_private"] = 1
        if draw(st.integers(0, 9)) == 0:
            rec["msg_id"] = f"m{len(records)}"
        if draw(st.integers(0, 12)) == 0:
            del rec[TIMESTAMP]  # rejected
        records.append(rec)
    now = max(r.get(TIMESTAMP, t) for r in records) + draw(st.sampled_from([1.0, 3600.0]))
    consents = [
        Consent(
            f"x{i}",
            draw(st.sampled_from(VINS)),
            draw(st.sampled_from(PURPOSES)),
            T0 + draw(st.floats(min_value=-4e7, max_value=9e7)),
            T0 + draw(st.floats(min_value=-3e7, max_value=1.2e8)),
            draw(st.one_of(st.none(), st.floats(min_value=T0 - 3e7, max_value=T0 + 1e8))),
        )
        for i in range(draw(st.integers(0, 4)))
    ]
    first = min((r.get(TIMESTAMP, t) for r in records), default=t)
    last_sent = {
        sub: {
            vin: first - draw(st.sampled_from([0.0, 1.0, 5.0, 29.0, 30.0, 600.0]))
            for vin in draw(st.sets(st.sampled_from(VINS), max_size=3))
        }
        for sub in ("mapco-nav", "insureco-ubi", "sh-traffic", "oem-hq-de")
    }
    counted = draw(st.sampled_from([0, 99_998, 999_999]))
    known = frozenset(draw(st.sets(st.sampled_from(VINS), max_size=2)))
    return {
        "records": records,
        "now": now,
        "consents": consents,
        "counted": counted,
        "known": known,
        "mid_trip": draw(st.booleans()),
        "last_sent": last_sent,
        "cuts": sorted(draw(st.sets(st.integers(1, max(1, n - 1)), max_size=3))),
    }


def initial_state(bundle: PolicyBundle, case: dict[str, Any]) -> StateSnapshot:
    book = ConsentBook.from_policy(bundle.consents).with_records(case["consents"])
    year = datetime.fromtimestamp(case["now"], BEIJING).year
    counts = {
        ("oem-hq-de", year, c): CrossBorderCount(case["counted"], case["known"])
        for c in (
            ExportDataClass.PERSONAL_INFORMATION,
            ExportDataClass.SENSITIVE_PERSONAL_INFORMATION,
        )
    }
    trips = {}
    if case["mid_trip"]:
        first = min((r.get(TIMESTAMP, math.inf) for r in case["records"]), default=T0)
        trips = {
            v: TripState(first - 5, math.nan, math.nan, math.inf, first - 5, math.nan, math.nan)
            for v in VINS
        }
    return StateSnapshot(
        now=case["now"],
        consents=book,
        trips=trips,
        crossborder=counts,
        last_sent=case.get("last_sent", {}),
    )


# --- the per-record reference -----------------------------------------------------------------


@dataclasses.dataclass
class Outcome:
    verdict: str
    rules: set[str]
    output: dict[str, Any] | None = None
    redacted: bool = False


def _iso(t: float) -> str:
    ms = round(t * 1000)
    moment = datetime.fromtimestamp(ms // 1000, UTC)
    text = moment.strftime("%Y-%m-%dT%H:%M:%S")
    return f"{text}Z" if ms % 1000 == 0 else f"{text}.{ms % 1000:03d}Z"


_GEOD = Geod(ellps="WGS84")


def _dist(a: tuple[float, float], b: tuple[float, float]) -> float:
    """Geodesic distance on the WGS-84 ellipsoid, one pair at a time."""
    return float(_GEOD.inv(a[1], a[0], b[1], b[0])[2])


class Reference:
    """Decide one record for one subscriber at a time: the semantics, written plainly."""

    def __init__(self, bundle: PolicyBundle, state: StateSnapshot) -> None:
        self.bundle = bundle
        self.state = state
        self.day = beijing_date(state.now)
        self.year = datetime.fromtimestamp(state.now, BEIJING).year
        self.floor = bundle.rules.geo.grid_floor_m

    # one subscriber's standing on the decision day
    def settings(self, sub_id: str) -> dict[str, Any]:
        sub = self.bundle.subscribers[sub_id]
        view = sub.view
        privileged = sub.mainland and sub.qualified_on(self.day)
        grid = (
            view.location_precision_m if privileged else max(view.location_precision_m, self.floor)
        )
        datum = view.datum if privileged else OutputDatum.GCJ02
        altitude = view.altitude
        alt_step = view.altitude_step_m
        if not privileged and altitude is AltitudeMode.KEEP:
            altitude = AltitudeMode.REMOVE
        if not privileged and alt_step is not None:
            alt_step = max(alt_step, self.bundle.rules.geo.altitude_floor_m)
        derived = view.location_derived
        if derived is DerivedMode.KEEP and not (privileged and grid == 0):
            derived = DerivedMode.COARSEN
        if privileged:
            pos_rules = {"geo.raw-requires-qualification"} if grid == 0 else {"view.precision"}
        else:
            pos_rules = {"view.precision", "geo.grid-floor", "geo.datum-gcj02"}
            if (
                view.raw_location
                or view.datum is OutputDatum.WGS84
                or view.location_precision_m < self.floor
            ):
                pos_rules.add("geo.raw-requires-qualification")
        approval = None
        if sub.cross_border:
            for b in sub.legal_bases_on(self.day, ExportDataClass.GEOGRAPHIC_DATA):
                if b.kind is LegalBasisKind.GEODATA_EXPORT_APPROVAL:
                    approval = b.id
                    break
        return {
            "sub": sub,
            "privileged": privileged,
            "grid": grid,
            "datum": datum,
            "altitude": altitude,
            "alt_step": alt_step,
            "derived": derived,
            "pos_rules": pos_rules,
            "approval": approval,
            "allowed": self.bundle.allowed_fields(sub_id),
            "authorised": sub.authorised_zones_on(self.day) if sub.mainland else frozenset(),
        }

    def fields(self, rec: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        """The record's classified values that fit their type, and whether any was dropped."""
        values: dict[str, Any] = {}
        dropped = False
        for name in sorted(rec):
            if name in (VIN, TIMESTAMP, LATITUDE, "Vehicle.CurrentLocation.Longitude", ALTITUDE,
                        "msg_id"):  # fmt: skip
                continue
            path = self.bundle.resolve(name)
            value = rec[name]
            if value is None:
                continue
            if path is None or not value_fits(self.bundle.fields[path], value):
                if path is None or path not in values:
                    dropped = True
                continue
            if name == path or path not in values:
                values[path] = value
        return values, dropped

    def zone(self, cfg: dict[str, Any], lat: float, lon: float) -> dict[str, Any]:
        """The zone standing of a position at the subscriber's grid, and its reported cell."""
        if cfg["grid"] == 0:
            mask = self.bundle.zones.points_in_zones(lat, lon)
            centre, cell = (lat, lon), None
        else:
            g = snap(lat, lon, cfg["grid"])
            mask = self.bundle.zones.mask_cells(g)
            centre = (float(g.lat[0]), float(g.lon[0]))
            cell = format_cell_id(int(g.cell[0]))
        hits = mask.zone_ids(0)
        levels = [self.bundle.zones[z].level for z in hits if z not in cfg["authorised"]]
        worst = ZoneLevel.PROHIBITED if mask.bad[0] else max(levels, default=ZoneLevel.NONE)
        return {"hits": hits, "bad": bool(mask.bad[0]), "worst": worst, "centre": centre,
                "cell": cell}  # fmt: skip

    def consent(
        self, vin: str, purposes: Iterable[str], t: float, start: float = math.inf
    ) -> Consent | None:
        """The consent (smallest id) active at the record's time and at the decision time,
        granted before the record's trip began (``start``)."""
        for record in self.state.consents.for_vehicle(vin):
            now = self.state.now
            active = record.active_at(t) and record.active_at(now)
            if record.purpose in purposes and active and record.granted <= start:
                return record
        return None

    def began_under(self, vin: str, purposes: Iterable[str], start: float) -> bool:
        """A consent held when the record's trip began (it may have lapsed since)."""
        return any(
            r.purpose in purposes and r.active_at(start)
            for r in self.state.consents.for_vehicle(vin)
        )

    def static(
        self,
        cfg: dict[str, Any],
        rec: dict[str, Any] | None,
        inherited: tuple[float, float] | None = None,
        start: float = math.inf,
    ) -> dict[str, Any]:
        """Everything about one (record, subscriber) that does not depend on other records
        but the last known position of its trip (``inherited``, for a record without one)."""
        if rec is None:
            return {"blocked": True, "rules": {"input.invalid"}}
        sub = cfg["sub"]
        view = sub.view
        allowed = cfg["allowed"]
        rules: set[str] = set()
        values, dropped = self.fields(rec)
        if dropped:
            rules.add("field.unclassified")
        has_pos = rec.get(LATITUDE) is not None
        has_alt = isinstance(rec.get(ALTITUDE), float)
        not_allowed = any(p not in allowed for p in values)
        not_allowed |= has_pos and LATITUDE not in allowed
        not_allowed |= has_alt and ALTITUDE not in allowed
        if not_allowed:
            rules.add("view.field-not-allowed")
        lat = rec.get(LATITUDE)
        lon = rec.get("Vehicle.CurrentLocation.Longitude")
        prohibited = sensitive = False
        centre = cell = None
        place = (lat, lon) if has_pos else inherited
        unplaced = place is None
        if place is not None:
            z = self.zone(cfg, *place)
            hits, worst = z["hits"], z["worst"]
            if has_pos:
                centre, cell = z["centre"], z["cell"]
            if set(hits) & cfg["authorised"]:
                rules.add("zone.authorised")
            if sub.cross_border and (hits or z["bad"]):
                rules.add("xborder.important-data")
            prohibited = worst == ZoneLevel.PROHIBITED
            sensitive = worst == ZoneLevel.SENSITIVE
            if prohibited:
                rules.add("zone.prohibited")
            if sensitive:
                rules.add("zone.sensitive")
        if prohibited:
            keep = {"zone.prohibited", "xborder.important-data", "zone.authorised"}
            return {"blocked": True, "rules": rules & keep, "has_pos": has_pos}
        wants = has_pos and LATITUDE in allowed
        out = wants
        if sub.cross_border and cfg["approval"] is None and out:
            rules.add("geo.mainland-only")
            out = False
        if sensitive:
            out = False
        gcj = None
        if out and cfg["datum"] is OutputDatum.GCJ02:
            r = transform(view.datum_transform, centre[0], centre[1])  # type: ignore[index]
            if not r.ok[0]:
                rules.add("geo.datum-unavailable")
                out = False
            else:
                gcj = (float(r.lat[0]), float(r.lon[0]))
        degraded = False
        trip_id = False
        consent = None
        derived_in = any(
            self.bundle.fields[p].category is FieldCategory.LOCATION_DERIVED and p in allowed
            for p in values
        )
        consent_dropped = False
        if LATITUDE in allowed:  # every record of a located view is judged
            found = self.consent(rec[VIN], sub.purposes, rec[TIMESTAMP], start)
            if found is not None:
                if out:
                    rules.add("pi.trajectory-consent")
                    consent = found.id
            elif view.no_consent is NoConsentFallback.DROP_LOCATION:
                if out or derived_in:
                    rules.add("pi.no-consent-drop-location")
                    consent_dropped = True
                out = False
            else:
                rules.add("pi.no-consent-trip-pseudonym")
                trip_id = True
                degraded |= view.identifier is not IdentifierMode.TRIP_PSEUDONYM
                if self.began_under(rec[VIN], sub.purposes, start):  # lapsed mid-trip
                    if out or derived_in:
                        rules.add("pi.no-consent-drop-location")
                        consent_dropped = True
                    out = False
        removed = wants and not out
        degraded |= removed
        if out:
            rules |= cfg["pos_rules"]
        alt_out = False
        if ALTITUDE in allowed and LATITUDE in allowed:
            if has_alt and wants and out:
                if cfg["altitude"] is AltitudeMode.COARSEN:
                    rules.add("geo.altitude-coarsened")
                    alt_out = True
                elif cfg["altitude"] is AltitudeMode.REMOVE:
                    rules.add("geo.altitude-removed")
                else:
                    alt_out = True
        elif ALTITUDE in allowed and has_alt:
            rules.add("geo.altitude-removed")
        derived_lost = derived_in and (removed or sensitive or unplaced or consent_dropped)
        degraded |= derived_lost
        if cfg["derived"] is DerivedMode.KEEP:
            if derived_lost:
                rules.add("pi.location-derived")
        elif derived_in:
            rules.add("pi.location-derived")
        vin_mode = view.identifier is IdentifierMode.VIN and VIN in allowed
        if vin_mode and not trip_id:
            rules.add("pi.vin-disclosed")
        else:
            rules.add("pi.vin-pseudonym")
        step = view.time_precision_s
        if math.floor(rec[TIMESTAMP] / step) * step != rec[TIMESTAMP]:
            rules.add("view.time-precision")
        return {
            "blocked": False,
            "rules": rules,
            "out": out,
            "degraded": degraded,
            "trip_id": trip_id
            or (view.identifier is IdentifierMode.TRIP_PSEUDONYM and not vin_mode),
            "vin_mode": vin_mode and not trip_id,
            "gcj": gcj,
            "centre": centre,
            "cell": cell,
            "alt_out": alt_out,
            "values": values,
            "derived_ok": not derived_lost,
            "consent": consent,
            "has_pos": has_pos,
        }

    def output(
        self, cfg: dict[str, Any], rec: dict[str, Any], info: dict[str, Any], trip_start: float
    ) -> dict[str, Any]:
        sub = cfg["sub"]
        view = sub.view
        key = keys(sub.id)
        vin = rec[VIN]
        if info["vin_mode"]:
            vehicle = vin
        elif info["trip_id"]:
            vehicle = trip_pseudonym(key, vin, trip_start)
        else:
            vehicle = keyed_pseudonym(key, vin)
        step = view.time_precision_s
        out: dict[str, Any] = {
            "schema": VIEW_SCHEMA,
            "subscriber": sub.id,
            "policy_version": self.bundle.version,
            "vehicle": vehicle,
            "time": _iso(math.floor(rec[TIMESTAMP] / step) * step),
        }
        allowed = cfg["allowed"]
        if LATITUDE in allowed:
            loc = None
            if info["out"]:
                lat_name, lon_name = coordinate_names(cfg["datum"])
                lat, lon = info["gcj"] if info["gcj"] else info["centre"]
                grid = cfg["grid"]
                loc = {
                    "datum": cfg["datum"].value,
                    "precision_m": int(grid) if float(grid).is_integer() else grid,
                    lat_name: lat,
                    lon_name: lon,
                }
                if grid > 0:
                    loc["cell"] = info["cell"]
                if info["alt_out"]:
                    alt = rec[ALTITUDE]
                    if cfg["altitude"] is AltitudeMode.COARSEN:
                        step_m = cfg["alt_step"]
                        loc["alt_m"] = float(coarsen_altitude(alt, step_m)[0])
                        loc["alt_step_m"] = int(step_m) if float(step_m).is_integer() else step_m
                    else:
                        loc["alt_m"] = alt
            out["location"] = loc
        signals: dict[str, Any] = {}
        for path, value in info["values"].items():
            spec = self.bundle.fields[path]
            if path not in allowed or spec.category in _OUTSIDE or path == TIMESTAMP:
                continue
            if spec.links_trips and info["trip_id"] and not info["vin_mode"]:
                continue  # a value carried over between trips would link them
            if spec.category is FieldCategory.LOCATION_DERIVED:
                if not info["derived_ok"] or cfg["derived"] is DerivedMode.SUPPRESS:
                    continue
                if cfg["derived"] is DerivedMode.COARSEN:
                    if spec.coarsen is None:
                        continue
                    k = math.floor(float(value) / spec.coarsen.step + 0.5)
                    if spec.coarsen.wrap is not None:
                        k %= round(spec.coarsen.wrap / spec.coarsen.step)
                    value = k * spec.coarsen.step + 0.0
                    if not math.isfinite(value):
                        continue
            elif spec.category is FieldCategory.TIME:
                parsed = datetime.fromisoformat(value)
                value = _iso(math.floor(parsed.timestamp() / step) * step)
            signals[path] = value
        out["signals"] = signals
        return out

    def trim_of(self, view: Any, info: dict[str, Any]) -> float:
        """The trip trim of one record: at least ``pseudonym_trim_m`` under a per-trip
        pseudonym (where one trip ends the next begins)."""
        if info["trip_id"] and not info["vin_mode"]:
            return max(view.trip_trim_m, self.bundle.rules.trips.pseudonym_trim_m)
        return float(view.trip_trim_m)

    def run(self, records: list[Any]) -> dict[tuple[str, int], Outcome]:
        """Outcome of every (subscriber, row) of one batch."""
        bundle = self.bundle
        state = self.state
        gap = bundle.rules.trips.split_gap_s
        live = []
        for rec in records:
            ok = (
                isinstance(rec, dict)
                and isinstance(rec.get(VIN), str)
                and isinstance(rec.get(TIMESTAMP), (int, float))
            )
            live.append(ok)
        order = sorted(
            (i for i in range(len(records)) if live[i]),
            key=lambda i: (records[i][VIN], records[i][TIMESTAMP], i),
        )
        # trips, one vehicle at a time in time order
        trip: dict[int, dict[str, Any]] = {}
        current: dict[str, dict[str, Any]] = {}
        segments: dict[str, list[list[int]]] = {}
        parked: dict[str, tuple[float, float] | None] = {}  # the vehicle's last position
        for i in order:
            rec = records[i]
            vin = rec[VIN]
            if vin not in parked:
                s0 = state.trips.get(vin)
                parked[vin] = (
                    None if s0 is None or math.isnan(s0.last_lat) else (s0.last_lat, s0.last_lon)
                )
            t = rec[TIMESTAMP]
            cur = current.get(vin)
            if cur is None:
                s = state.trips.get(vin)
                if s is None or s.ended or t - s.last_time > gap:
                    cur = None
                else:
                    cur = {
                        "start": s.start_time,
                        "start_pos": None
                        if math.isnan(s.start_lat)
                        else (s.start_lat, s.start_lon),
                        "last_pos": None if math.isnan(s.last_lat) else (s.last_lat, s.last_lon),
                        "last_t": s.last_time,
                        "far": s.max_disp_m,
                        "ended": False,
                        "cont": True,
                    }
            elif cur["ended"] or t - cur["last_t"] > gap:
                cur = None
            if cur is None:
                # a trip's start names its pseudonym: never the millisecond of the last one's
                before = current[vin]["start"] if vin in current else None
                if before is None and vin in state.trips:
                    before = state.trips[vin].start_time
                start = t
                if before is not None and round(t * 1000) <= round(before * 1000):
                    start = (round(before * 1000) + 1) / 1000
                cur = {"start": start, "start_pos": None, "last_pos": None, "last_t": -math.inf,
                       "far": 0.0, "ended": False, "cont": False}  # fmt: skip
                segments.setdefault(vin, []).append([])
            elif not segments.get(vin):
                segments.setdefault(vin, []).append([])
            current[vin] = cur
            segments[vin][-1].append(i)
            if rec.get(LATITUDE) is not None:
                pos = (rec[LATITUDE], rec["Vehicle.CurrentLocation.Longitude"])
                cur["last_pos"] = pos
                parked[vin] = pos
                if cur["start_pos"] is None:
                    cur["start_pos"] = pos
            disp = 0.0
            if cur["start_pos"] is not None and cur["last_pos"] is not None:
                disp = _dist(cur["start_pos"], cur["last_pos"])
            cur["far"] = max(cur["far"], disp)
            cur["last_t"] = max(cur["last_t"], t)
            cur["ended"] = rec.get(KEY_OFF_SIGNAL) in KEY_OFF_VALUES
            trip[i] = {"start": cur["start"], "pos": cur["last_pos"], "far": cur["far"],
                       "cont": cur["cont"], "parked": parked[vin]}  # fmt: skip
        seg_of: dict[int, tuple[str, int]] = {}
        for vin, segs in segments.items():
            for k, seg in enumerate(segs):
                for i in seg:
                    seg_of[i] = (vin, k)

        def seg_ended(vin: str, k: int) -> bool:
            segs = segments[vin]
            return k < len(segs) - 1 or current[vin]["ended"] if k == len(segs) - 1 else True

        outcomes: dict[tuple[str, int], Outcome] = {}
        for sub_id in bundle.subscribers:
            cfg = self.settings(sub_id)
            view = cfg["sub"].view
            infos = {}
            for i, rec in enumerate(records):
                # without a position: the trip's last, else where the vehicle was last seen
                carried = (trip[i]["pos"] or trip[i]["parked"]) if live[i] else None
                start = trip[i]["start"] if live[i] else math.inf
                info = self.static(cfg, rec if live[i] else None, carried, start)
                infos[i] = info
                if info["blocked"]:
                    outcomes[(sub_id, i)] = Outcome("block", info["rules"])
            passing = []
            for i in order:
                if infos[i]["blocked"]:
                    continue
                trim = self.trim_of(view, infos[i])
                if trim > 0 and trip[i]["far"] < trim:
                    outcomes[(sub_id, i)] = Outcome("block", {"pi.trip-trim"})
                    continue
                passing.append(i)
            # down-sampling, per vehicle in time order
            last = dict(state.last_sent.get(sub_id, {}))
            sent = []
            for i in passing:
                vin, t = records[i][VIN], records[i][TIMESTAMP]
                if view.min_interval_s <= 0 or t >= last.get(vin, -math.inf) + view.min_interval_s:
                    sent.append(i)
                    last[vin] = t
                else:
                    outcomes[(sub_id, i)] = Outcome("block", {"view.downsample"})
            # cross-border thresholds, in time order
            basis: dict[int, list[str]] = {}
            if cfg["sub"].cross_border:
                sent = self.gate(cfg, records, infos, sent, outcomes, basis)
            # trip end: held until a later record of the trip is far enough
            for i in sent:
                info = infos[i]
                rules = set(info["rules"])
                for b in basis.get(i, ()):
                    rules.add(b)
                verdict = "redact" if info["degraded"] else "share"
                trim = self.trim_of(view, info)
                if trim > 0:
                    vin, k = seg_of[i]
                    seg = segments[vin][k]
                    later = seg[seg.index(i) + 1 :]
                    here = trip[i]["pos"]
                    released = here is not None and any(
                        trip[j]["pos"] is not None and _dist(here, trip[j]["pos"]) >= trim
                        for j in later
                    )
                    if not released:
                        if seg_ended(vin, k):
                            outcomes[(sub_id, i)] = Outcome("block", {"pi.trip-trim"})
                            continue
                        rules.add("pi.trip-trim")
                        verdict = "held"
                out = self.output(cfg, records[i], info, trip[i]["start"])
                outcomes[(sub_id, i)] = Outcome(verdict, rules, out, info["degraded"])
        return outcomes

    def gate(
        self,
        cfg: dict[str, Any],
        records: list[Any],
        infos: dict[int, dict[str, Any]],
        sent: list[int],
        outcomes: dict[tuple[str, int], Outcome],
        basis: dict[int, list[str]],
    ) -> list[int]:
        sub = cfg["sub"]
        xb = self.bundle.rules.crossborder
        tiers = {
            ExportDataClass.PERSONAL_INFORMATION: xb.personal_information,
            ExportDataClass.SENSITIVE_PERSONAL_INFORMATION: xb.sensitive_personal_information,
        }
        known: dict[ExportDataClass, set[str]] = {}
        count: dict[ExportDataClass, int] = {}
        for c in tiers:
            entry = self.state.count((sub.id, self.year, c))
            known[c], count[c] = set(entry.known), entry.count
        keep: list[int] = []
        if not sub.assessed_on(self.day):  # no PI impact assessment yet: nothing goes abroad
            for i in sent:
                outcomes[(sub.id, i)] = Outcome("block", {"xborder.impact-assessment"})
            return keep
        for i in sorted(sent, key=lambda i: (records[i][TIMESTAMP], i)):  # ties: arrival
            vin = records[i][VIN]
            classes = [ExportDataClass.PERSONAL_INFORMATION]
            if infos[i]["out"]:
                classes.append(ExportDataClass.SENSITIVE_PERSONAL_INFORMATION)
            ok = True
            cited: set[str] = set()
            used: list[str] = []
            for c in classes:
                n = count[c] + (vin not in known[c])
                tier = tiers[c]
                important = (
                    c is ExportDataClass.PERSONAL_INFORMATION
                    and xb.vehicle_pi_over_100k_important
                    and n > 100_000
                )
                level = 2 if (n >= tier.assessment_from or (xb.ciio and n >= 1) or important) else (
                    1 if n >= tier.contract_from else 0)  # fmt: skip
                cited.add(
                    ["xborder.exempt", "xborder.tier-contract", "xborder.tier-assessment"][level]
                )
                if level:
                    kinds = (
                        {"standard_contract", "certification", "security_assessment"}
                        if level == 1
                        else {"security_assessment"}
                    )
                    found = [b.id for b in sub.legal_bases_on(self.day, c) if b.kind.value in kinds]
                    if not found:
                        ok = False
                    else:
                        used.append(found[0])
            if ok:
                for c in classes:
                    if vin not in known[c]:
                        known[c].add(vin)
                        count[c] += 1
                infos[i]["rules"] = infos[i]["rules"] | cited
                basis[i] = []
                infos[i]["basis"] = used
                keep.append(i)
            else:
                outcomes[(sub.id, i)] = Outcome("block", cited | {"xborder.basis-missing"})
        return sorted(keep, key=lambda i: (records[i][VIN], records[i][TIMESTAMP], i))


# --- comparing the two ------------------------------------------------------------------------


def columnar(d: Decisions, sh: Shaped) -> dict[tuple[str, int], Outcome]:
    outputs: dict[tuple[int, int], dict[str, Any]] = {}
    for s, row, view in zip(sh.subscriber.tolist(), sh.row.tolist(), sh.views, strict=True):
        outputs[(s, row)] = view
    for s, row, held in zip(
        sh.held_subscriber.tolist(), sh.held_row.tolist(), sh.held, strict=True
    ):
        outputs[(s, row)] = dict(held.view)
    out = {}
    for v in d.plan.views:
        for row in range(len(d.batch)):
            verdict = Verdict(int(d.verdict[v.index, row])).label
            out[(v.id, row)] = Outcome(
                verdict,
                set(d.rule_ids(v.index, row)),
                outputs.get((v.index, row)),
                bool(d.redacted[v.index, row]),
            )
    return out


def same_output(a: dict[str, Any] | None, b: dict[str, Any] | None) -> bool:
    if a is None or b is None:
        return a is b
    if set(a) != set(b):
        return False
    for k in a:
        if isinstance(a[k], dict) and isinstance(b[k], dict):
            if set(a[k]) != set(b[k]):
                return False
            for kk in a[k]:
                x, y = a[k][kk], b[k][kk]
                if isinstance(x, float) and isinstance(y, float):
                    if not math.isclose(x, y, rel_tol=0, abs_tol=1e-12):
                        return False
                elif x != y or type(x) is not type(y):
                    return False
        elif a[k] != b[k]:
            return False
    return True


def decode(records: list[Any], bundle: PolicyBundle) -> Batch:
    return decode_records(records, bundle.aliases)


@settings(max_examples=60)
@given(streams(), st.sampled_from(["default", "variant"]))
def test_columnar_agrees_with_the_per_record_reference(
    bundles: dict[str, PolicyBundle], case: dict[str, Any], which: str
) -> None:
    bundle = bundles[which]
    state = initial_state(bundle, case)
    records = case["records"]
    d, sh = evaluate(decode(records, bundle), bundle, state, keys)
    got = columnar(d, sh)
    want = Reference(bundle, state).run(records)
    assert set(got) == set(want)
    for key, expected in want.items():
        actual = got[key]
        assert (actual.verdict, actual.rules) == (expected.verdict, expected.rules), (key, records)
        if expected.verdict in ("share", "redact", "held"):
            assert same_output(actual.output, expected.output), (
                key,
                actual.output,
                expected.output,
            )
        else:
            assert actual.output is None


def stream_outcome(
    bundle: PolicyBundle, records: list[Any], state: StateSnapshot, cuts: Iterable[int]
) -> dict[tuple[str, int], tuple[str, dict[str, Any] | None]]:
    """Final (verdict, output) of every (subscriber, record) when the stream is cut at
    ``cuts``; held views released later become their decision, discarded ones blocks."""
    bounds = [0, *cuts, len(records)]
    result: dict[tuple[str, int], tuple[str, dict[str, Any] | None]] = {}
    held_at: dict[str, tuple[str, int]] = {}  # message id -> (subscriber, record)
    for lo, hi in itertools.pairwise(bounds):
        if lo >= hi:
            continue
        part = records[lo:hi]
        d, sh = evaluate(decode(part, bundle), bundle, state, keys)
        for key, outcome in columnar(d, sh).items():
            result[(key[0], lo + key[1])] = (outcome.verdict, outcome.output)
        for s, row, view in zip(
            sh.held_subscriber.tolist(), sh.held_row.tolist(), sh.held, strict=True
        ):
            held_at[view.message_id + view.subscriber] = (d.plan.views[s].id, lo + row)
        for view in d.delta.released:
            result[held_at[view.message_id + view.subscriber]] = (view.decision, dict(view.view))
        for view in d.delta.discarded:
            result[held_at[view.message_id + view.subscriber]] = ("block", None)
        state = state.apply(d.delta, sh.held, now=state.now)
    return result


@settings(max_examples=80)
@given(streams())
def test_cutting_a_stream_into_batches_changes_nothing(
    bundles: dict[str, PolicyBundle], case: dict[str, Any]
) -> None:
    bundle = bundles["default"]
    records = [r for r in case["records"] if TIMESTAMP in r]  # a stream in time order
    state = initial_state(bundle, case)
    whole = stream_outcome(bundle, records, state, [])
    cut = stream_outcome(bundle, records, state, case["cuts"])
    assert set(whole) == set(cut)
    for key in whole:
        assert whole[key][0] == cut[key][0], key
        assert same_output(whole[key][1], cut[key][1]), key


def test_a_tie_in_time_is_broken_by_arrival_not_by_vehicle() -> None:
    """Two vehicles' records with one timestamp, counts just below a threshold the
    cross-border subscriber has no basis for: the first to arrive is counted first, whether
    the two come in one batch or in two (the vehicle's place in the batch decides nothing)."""
    bundle = load_bundle()
    late, early = sorted(VINS[:2], reverse=True)  # arrives first, sorts last
    t = T0 + 3600
    records = [{VIN: vin, TIMESTAMP: t, "Vehicle.Speed": 30.0} for vin in (late, early)]
    for counted in range(99_990, 100_010):
        case = {"records": records, "now": t + 1, "consents": [], "counted": counted,
                "known": frozenset(), "mid_trip": False}  # fmt: skip
        state = initial_state(bundle, case)
        whole = stream_outcome(bundle, records, state, [])
        cut = stream_outcome(bundle, records, state, [1])
        assert {k: v[0] for k, v in whole.items()} == {k: v[0] for k, v in cut.items()}, counted
        verdicts = [whole[("oem-hq-de", i)][0] for i in range(2)]
        if verdicts[0] != verdicts[1]:  # the threshold falls between them
            assert verdicts == ["share", "block"], counted
            break
    else:
        raise AssertionError("no count in range puts a threshold between the two records")


@settings(max_examples=60)
@given(streams(), st.sampled_from(["default", "variant"]))
def test_no_unqualified_view_holds_a_fine_or_wgs84_position(
    bundles: dict[str, PolicyBundle], case: dict[str, Any], which: str
) -> None:
    bundle = bundles[which]
    state = initial_state(bundle, case)
    records = case["records"]
    d, sh = evaluate(decode(records, bundle), bundle, state, keys)
    floor = bundle.rules.geo.grid_floor_m
    raw = {
        float(v)
        for r in records
        for k, v in r.items()
        if k in (LATITUDE, "Vehicle.CurrentLocation.Longitude") and isinstance(v, float)
    }
    day = beijing_date(state.now)
    outputs = [(d.plan.views[s], v) for s, v in zip(sh.subscriber.tolist(), sh.views, strict=True)]
    outputs += [
        (d.plan.views[s], h.view) for s, h in zip(sh.held_subscriber.tolist(), sh.held, strict=True)
    ]
    for view, obj in outputs:
        sub = view.subscriber
        qualified = sub.mainland and sub.qualified_on(day)
        check_derived(bundle, view.id, qualified, obj)
        location = obj.get("location")
        if qualified or location is None:
            continue
        assert location["datum"] == "GCJ-02"
        assert not any("wgs84" in k for k in location)
        assert location["precision_m"] >= floor
        band, ix, iy = split_cell_id(parse_cell_id(location["cell"]))
        c_lat, c_lon = cell_centres(band, ix, iy, location["precision_m"])
        expected = transform(sub.view.datum_transform, c_lat, c_lon)
        assert math.isclose(location["lat_gcj02"], float(expected.lat[0]), abs_tol=1e-9)
        assert math.isclose(location["lon_gcj02"], float(expected.lon[0]), abs_tol=1e-9)
        numbers = [v for v in location.values() if isinstance(v, float)]
        assert not raw & set(numbers)
        if "alt_m" in location:
            step = sub.view.altitude_step_m
            assert step is not None and location["alt_m"] % step == 0
            assert location["alt_step_m"] >= bundle.rules.geo.altitude_floor_m
            assert location["alt_m"] % location["alt_step_m"] == 0


def check_derived(bundle: PolicyBundle, sub_id: str, qualified: bool, obj: dict[str, Any]) -> None:
    """Location-derived values are never finer than the view allows."""
    view = bundle.subscribers[sub_id].view
    raw_ok = qualified and view.raw_location and view.location_derived is DerivedMode.KEEP
    for path, value in obj["signals"].items():
        spec = bundle.fields[path]
        if spec.category is not FieldCategory.LOCATION_DERIVED:
            continue
        assert view.location_derived is not DerivedMode.SUPPRESS
        if raw_ok:
            continue
        assert spec.coarsen is not None
        k = value / spec.coarsen.step
        assert k == round(k)
        if spec.coarsen.wrap is not None:
            assert 0 <= value < spec.coarsen.wrap


def test_the_reference_itself_covers_the_interesting_cases(
    bundles: dict[str, PolicyBundle],
) -> None:
    """A fixed stream through the reference and the engine: the property tests' rule space."""
    bundle = bundles["variant"]
    records: list[Any] = []
    t = T0
    for i in range(40):
        place = PLACES[i % len(PLACES)]
        records.append(
            {
                VIN: VINS[i % len(VINS)],
                TIMESTAMP: t,
                LATITUDE: place[0] + 0.001 * i,
                "Vehicle.CurrentLocation.Longitude": place[1],
                ALTITUDE: 12.0,
                "Vehicle.Speed": 33.0 + i,
                "oem_private": 1,
            }
        )
        t += 37.0
    case = {"records": records, "now": t, "consents": [], "counted": 0, "known": frozenset(),
            "mid_trip": False, "cuts": []}  # fmt: skip
    state = initial_state(bundle, case)
    d, sh = evaluate(decode(records, bundle), bundle, state, keys)
    got = columnar(d, sh)
    want = Reference(bundle, state).run(records)
    assert {k: (o.verdict, o.rules) for k, o in got.items()} == {
        k: (o.verdict, o.rules) for k, o in want.items()
    }
    cited = set().union(*(o.rules for o in want.values()))
    assert len(cited) >= 18, sorted(cited)
    assert cited <= {str(r) for r in RuleId}
    assert {o.verdict for o in want.values()} >= {"share", "redact", "block", "held"}
    assert len(HeldSet(sh.held)) == len(sh.held) and all(isinstance(h, HeldView) for h in sh.held)
    assert np.all(np.isin(d.verdict, [0, 1, 2, 3]))


# --- sensitive and important fields (RULES.md §2, §4) ----------------------------------------

PEOPLE_FIELDS = {
    "Vehicle.Driver.HeartRate": 72,
    "Vehicle.Driver.Identifier.Subject": "driver-7",
    "Vehicle.Cabin.Seat.Row2.DriverSide.IsOccupied": True,
    "Vehicle.ADAS.Camera.Front.Image": "s3://frames/1.jpg",
    "Vehicle.Cabin.Camera.DriverMonitor.Image": "s3://frames/2.jpg",
}


def _with_people(bundle: PolicyBundle, bases: list[LegalBasis]) -> PolicyBundle:
    subs = dict(bundle.subscribers)
    for sub_id in ("oem-hq-de", "insureco-ubi", "mapco-nav"):
        sub = subs[sub_id]
        view = sub.view.model_copy(
            update={
                "categories": (*sub.view.categories, FieldCategory.PERSONAL, FieldCategory.IMAGERY)
            }
        )
        extra = tuple(bases) if sub.cross_border else ()
        subs[sub_id] = sub.model_copy(
            update={"view": view, "legal_bases": (*sub.legal_bases, *extra)}
        )
    return dataclasses.replace(bundle, subscribers=MappingProxyType(subs))


_BASES = st.lists(
    st.tuples(
        st.sampled_from(list(LegalBasisKind)),
        st.sampled_from(
            [
                (ExportDataClass.SENSITIVE_PERSONAL_INFORMATION,),
                (ExportDataClass.IMPORTANT_DATA,),
                (ExportDataClass.PERSONAL_INFORMATION, ExportDataClass.IMPORTANT_DATA),
            ]
        ),
        st.sampled_from([date(2026, 6, 30), date(2030, 1, 1)]),
    ),
    max_size=2,
)
_PEOPLE = st.lists(st.sets(st.sampled_from(sorted(PEOPLE_FIELDS))), min_size=24, max_size=24)


@settings(max_examples=30, deadline=None)
@given(streams(), _BASES, _PEOPLE)
def test_sensitive_and_important_fields_go_only_where_a_basis_or_purpose_covers_them(
    bundles: dict[str, PolicyBundle],
    case: dict[str, Any],
    drawn: list[tuple[LegalBasisKind, tuple[ExportDataClass, ...], date]],
    people: list[set[str]],
) -> None:
    """A view abroad carrying a field flagged sensitive holds a valid basis covering sensitive
    PI for its tier; important fields go abroad only under a valid security assessment, and
    to a mainland view only for a purpose the field names."""
    bases = [
        LegalBasis(kind=k, id=f"B-{i}", covers=c, expires=e) for i, (k, c, e) in enumerate(drawn)
    ]
    bundle = _with_people(bundles["default"], bases)
    if case["counted"] == 0:  # a consistent count: the vehicles known are among those counted
        case = {**case, "known": frozenset()}
    records = [
        {**r, **{p: PEOPLE_FIELDS[p] for p in extra}} if isinstance(r, dict) else r
        for r, extra in zip(case["records"], people, strict=False)
    ]
    state = initial_state(bundle, case)
    _, sh = evaluate(decode(records, bundle), bundle, state, keys)
    day = beijing_date(state.now)
    outputs = list(zip(sh.subscriber.tolist(), sh.views, strict=True))
    outputs += [(s, h.view) for s, h in zip(sh.held_subscriber.tolist(), sh.held, strict=True)]
    subs = list(bundle.subscribers.values())
    for s, obj in outputs:
        sub = subs[s]
        for path in obj["signals"]:
            spec = bundle.fields[path]
            if spec.important and sub.cross_border:
                assert any(
                    b.kind is LegalBasisKind.SECURITY_ASSESSMENT
                    for b in sub.legal_bases_on(day, ExportDataClass.IMPORTANT_DATA)
                ), (sub.id, path)
            elif spec.important:
                assert set(spec.purposes) & set(sub.purposes), (sub.id, path)
            if spec.sensitive and sub.cross_border:
                assert sub.legal_bases_on(day, ExportDataClass.SENSITIVE_PERSONAL_INFORMATION), (
                    sub.id,
                    path,
                )


# --- unlinkable trips ---------------------------------------------------------------------------


@st.composite
def fleets(draw: Any) -> dict[str, Any]:
    """A few vehicles driving several trips each (split by key-off or a long gap), with
    continuous odometers, trips that start where the last one ended, records without a
    position, ``msg_id`` counters that run on, restart every trip (a TCU rebooted: the same
    ids again), wrap around after a few ids or are absent, random consents, random views and
    random batch cuts."""
    records: list[dict[str, Any]] = []
    for vin in draw(st.sets(st.sampled_from(VINS), min_size=1, max_size=3)):
        t = T0 + draw(st.floats(min_value=0, max_value=3600))
        here = draw(st.sampled_from(PLACES))
        odometer = draw(st.floats(min_value=1000, max_value=90000))
        soc = 80.0
        ids = draw(st.sampled_from(["restarting", "wrapping", "running", "none"]))
        wrap = draw(st.integers(1, 3)) if ids == "wrapping" else 1 << 32
        counter = 0
        for _ in range(draw(st.integers(2, 4))):
            n = draw(st.integers(1, 6))
            counter = 0 if ids == "restarting" else counter
            for k in range(n):
                t += draw(st.sampled_from([1.0, 7.0, 31.0, 90.0]))
                step = draw(st.sampled_from([0.0, 0.0005, 0.003]))
                here = (here[0] + step, here[1] + draw(st.sampled_from([0.0, step])))
                odometer += step * 111.0
                rec: dict[str, Any] = {VIN: vin, TIMESTAMP: t, "Vehicle.TraveledDistance": odometer}
                if ids != "none":
                    rec["msg_id"] = f"{vin}-{counter % wrap}"
                    counter += 1
                if draw(st.integers(0, 4)) > 0:
                    rec[LATITUDE] = here[0]
                    rec["Vehicle.CurrentLocation.Longitude"] = here[1]
                if draw(st.booleans()):
                    rec["Vehicle.Speed"] = draw(st.floats(min_value=0, max_value=120))
                soc -= draw(st.sampled_from([0.0, 0.5]))
                rec["Vehicle.Powertrain.TractionBattery.StateOfCharge.Current"] = soc
                if k == n - 1 and draw(st.booleans()):
                    rec[KEY_OFF_SIGNAL] = "OFF"
                records.append(rec)
            t += draw(st.sampled_from([5.0, 700.0, 4000.0]))  # parked; the next trip starts here
            if KEY_OFF_SIGNAL not in records[-1]:
                t += 700.0
    records.sort(key=lambda r: r[TIMESTAMP])
    views = {
        sub: {
            "identifier": draw(st.sampled_from(list(IdentifierMode))),
            "no_consent": draw(st.sampled_from(list(NoConsentFallback))),
            "trip_trim_m": draw(st.sampled_from([0.0, 200.0])),
            "min_interval_s": draw(st.sampled_from([0.0, 30.0])),
        }
        for sub in ("mapco-nav", "insureco-ubi", "sh-traffic", "oem-hq-de")
    }
    consents = [
        Consent(
            f"y{i}",
            draw(st.sampled_from(VINS)),
            draw(st.sampled_from(PURPOSES)),
            T0 + draw(st.floats(min_value=-4e5, max_value=4e4)),
            T0 + draw(st.floats(min_value=0, max_value=4e5)),
        )
        for i in range(draw(st.integers(0, 3)))
    ]
    n = len(records)
    cuts = sorted(draw(st.sets(st.integers(1, max(1, n - 1)), max_size=3)))
    return {"records": records, "views": views, "consents": consents, "cuts": cuts}


def fleet_bundle(base: PolicyBundle, views: dict[str, dict[str, Any]]) -> PolicyBundle:
    subs = dict(base.subscribers)
    for sub_id, change in views.items():
        view = subs[sub_id].view
        update = dict(change)
        if change["identifier"] is IdentifierMode.VIN:
            update["fields"] = (*view.fields, VIN)
        subs[sub_id] = subs[sub_id].model_copy(update={"view": view.model_copy(update=update)})
    return dataclasses.replace(base, subscribers=MappingProxyType(subs))


@dataclasses.dataclass(frozen=True)
class Delivered:
    """One view a subscriber received: of which vehicle and trip (as the engine saw it)."""

    subscriber: str
    vehicle: str
    trip: float
    message_id: str
    view: dict[str, Any]
    where: tuple[float, float]


def deliveries(
    bundle: PolicyBundle,
    records: list[Any],
    state: StateSnapshot,
    cuts: Iterable[int],
    trips: dict[tuple[str, float], list[tuple[float, float]]] | None = None,
) -> list[Delivered]:
    """Every view delivered when the stream is cut at ``cuts`` (held views when released);
    ``trips`` collects each trip's true positions, in time order."""
    bounds = [0, *cuts, len(records)]
    out: list[Delivered] = []
    trips = {} if trips is None else trips
    for lo, hi in itertools.pairwise(bounds):
        if lo >= hi:
            continue
        state = dataclasses.replace(state, now=records[hi - 1][TIMESTAMP] + 1.0)
        d, sh = evaluate(decode(records[lo:hi], bundle), bundle, state, keys)
        lat, lon = d.batch.lat, d.batch.lon
        for row in np.argsort(d.batch.time, kind="stable").tolist():
            if d.located.positioned[row]:
                key = (str(d.batch.vehicle[row]), float(d.trip_start[row]))
                trips.setdefault(key, []).append((float(lat[row]), float(lon[row])))
        for s, row, view, mid in zip(
            sh.subscriber.tolist(), sh.row.tolist(), sh.views, sh.message_ids, strict=True
        ):
            vin = str(d.batch.vehicle[row])
            trip = float(d.trip_start[row])
            where = (float(lat[row]), float(lon[row]))
            out.append(Delivered(d.plan.views[s].id, vin, trip, mid, view, where))
        for h in d.delta.released:
            where = (h.lat, h.lon)
            out.append(
                Delivered(h.subscriber, h.vehicle, h.trip_start, h.message_id, dict(h.view), where)
            )
        state = state.apply(d.delta, sh.held)
    return out


def must_be_unlinkable(bundle: PolicyBundle, book: ConsentBook, sub_id: str, vin: str) -> bool:
    """Whether a subscriber's views of a vehicle must not link its trips: the view uses
    per-trip pseudonyms, or the vehicle never consented and the fallback is per-trip."""
    view = bundle.subscribers[sub_id].view
    if view.identifier is IdentifierMode.TRIP_PSEUDONYM:
        return True
    purposes = set(bundle.subscribers[sub_id].purposes)
    consented = any(c.purpose in purposes for c in book.for_vehicle(vin))
    return view.no_consent is NoConsentFallback.TRIP_PSEUDONYM and not consented


def identifiers(bundle: PolicyBundle, item: Delivered) -> set[str]:
    """The identifier values a subscriber reads in one delivery: topic segments and the
    payload's identifying fields."""
    topic = view_topic(bundle, item.subscriber, item.view).split("/")
    return {*topic[:-1][-1:], item.view["vehicle"], item.message_id}


def assert_per_trip_views_stand_alone(bundle: PolicyBundle, delivered: list[Delivered]) -> None:
    """Whatever the vehicle's consents: an identifier read beside a per-trip pseudonym
    appears in no other trip, and a trip with located per-trip views has no view under a
    stable identifier (it would continue their track and name them: consent granted or
    withdrawn mid-trip)."""
    trips_of: dict[tuple[str, str, str], set[float]] = {}
    located_per_trip: set[tuple[str, str, float]] = set()
    stable: set[tuple[str, str, float]] = set()
    for item in delivered:
        trip = (item.subscriber, item.vehicle, item.trip)
        if not item.view["vehicle"].startswith("pt-"):
            stable.add(trip)
            continue
        if item.view.get("location") is not None:
            located_per_trip.add(trip)
        for value in identifiers(bundle, item):
            trips_of.setdefault((item.subscriber, item.vehicle, value), set()).add(item.trip)
    for item in delivered:
        for value in identifiers(bundle, item):
            others = trips_of.get((item.subscriber, item.vehicle, value), set()) - {item.trip}
            assert not others, (item, value, others)
    assert not located_per_trip & stable, located_per_trip & stable


@settings(max_examples=40, deadline=None)
@given(fleets())
def test_no_identifier_links_two_trips_of_an_unlinkable_vehicle(
    bundles: dict[str, PolicyBundle], case: dict[str, Any]
) -> None:
    bundle = fleet_bundle(bundles["default"], case["views"])
    records = case["records"]
    book = ConsentBook.from_policy(bundle.consents).with_records(case["consents"])
    state = StateSnapshot(now=records[0][TIMESTAMP], consents=book)
    seen: dict[tuple[str, str, str], set[float]] = {}
    carried: dict[tuple[str, str, str, Any], set[float]] = {}
    trips: dict[tuple[str, float], list[tuple[float, float]]] = {}
    ids: dict[tuple[str, str], set[tuple[str, float]]] = {}
    trim = bundle.rules.trips.pseudonym_trim_m
    for item in deliveries(bundle, records, state, case["cuts"], trips):
        # A message id names one record, in every view: a msg_id the vehicle reuses in a
        # later trip (its counter restarted) must not bring the same id back.
        ids.setdefault((item.subscriber, item.message_id), set()).add((item.vehicle, item.trip))
        if not must_be_unlinkable(bundle, book, item.subscriber, item.vehicle):
            continue
        if item.view.get("location") is not None:
            # Trip ends: where one trip ends the next begins. (The fleets drive away from
            # where they start, never back, so the trims bound these distances.)
            path = trips[(item.vehicle, item.trip)]
            assert _dist(path[0], item.where) >= trim, (item, path[0])
            assert _dist(item.where, path[-1]) >= trim, (item, path[-1])
        for value in identifiers(bundle, item):
            seen.setdefault((item.subscriber, item.vehicle, value), set()).add(item.trip)
        # Quasi-identifiers: a value that carries over from one trip to the next (an
        # odometer, an energy level) links the trips as surely as an identifier.
        for path, value in item.view["signals"].items():
            if bundle.fields[path].links_trips:
                key = (item.subscriber, item.vehicle, path, value)
                carried.setdefault(key, set()).add(item.trip)
    linked = {key: trips for key, trips in seen.items() if len(trips) > 1}
    assert not linked, linked
    reused = {key: where for key, where in ids.items() if len(where) > 1}
    assert not reused, reused
    assert_per_trip_views_stand_alone(bundle, deliveries(bundle, records, state, case["cuts"]))
    linked_by_value = {key: trips for key, trips in carried.items() if len(trips) > 1}
    assert not linked_by_value, linked_by_value


@settings(max_examples=60, deadline=None)
@given(streams(), st.sampled_from(["default", "variant"]))
def test_a_record_without_a_position_obeys_its_trips_last_zone(
    bundles: dict[str, PolicyBundle], case: dict[str, Any], which: str
) -> None:
    """A record without a position is judged on its trip's last known position (RULES.md
    §3): in a prohibited zone nothing goes, in a sensitive one no location-derived field;
    with no known position at all, no location-derived field either."""
    bundle = bundles[which]
    state = initial_state(bundle, case)
    records = case["records"]
    d, sh = evaluate(decode(records, bundle), bundle, state, keys)
    outputs = {
        (d.plan.views[s].id, row): view
        for s, row, view in zip(sh.subscriber.tolist(), sh.row.tolist(), sh.views, strict=True)
    }
    for s, row, held in zip(
        sh.held_subscriber.tolist(), sh.held_row.tolist(), sh.held, strict=True
    ):
        outputs[(d.plan.views[s].id, row)] = dict(held.view)
    reference = Reference(bundle, state)
    live = np.flatnonzero(d.batch.ok & ~d.located.positioned)
    order = np.lexsort((np.arange(len(d.batch)), d.batch.time)).tolist()
    for row in live.tolist():
        last = None  # the vehicle's last position before this record (this trip's, or
        for r in reversed(order[: order.index(row)]):  # where it parked), walking back
            if d.batch.vehicle[r] != d.batch.vehicle[row] or not d.batch.ok[r]:
                continue
            if d.located.positioned[r]:
                last = r
                break
        for sub_id in bundle.subscribers:
            out = outputs.get((sub_id, row))
            if out is None:
                continue
            derived = [
                p
                for p in out["signals"]
                if bundle.fields[p].category is FieldCategory.LOCATION_DERIVED
            ]
            if last is None:  # (the stored trips of these streams carry no position)
                assert not derived, (sub_id, row, out)
                continue
            place = (float(d.batch.lat[last]), float(d.batch.lon[last]))
            worst = reference.zone(reference.settings(sub_id), *place)["worst"]
            assert worst != ZoneLevel.PROHIBITED, (sub_id, row, out)
            if worst == ZoneLevel.SENSITIVE:
                assert not derived, (sub_id, row, out)
