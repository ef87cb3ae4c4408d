"""The decision engine, rule by rule, on the default bundle (table-driven), and its state.

Every case is one record (or a few) decided for one subscriber; the table as a whole must
cite every rule id of the bundle's catalogue (checked at the end), including expiry, zone
authorisation, consent withdrawal and threshold crossing.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections.abc import Callable
from datetime import datetime
from types import MappingProxyType
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pyproj import Geod

from gateway.model import Consent
from gateway.pipeline.classify import classify
from gateway.pipeline.decide import (
    Applied,
    Decisions,
    Verdict,
    crossborder_gate,
    decide,
    distance_m,
    plan,
    rule_ids,
    sweep,
)
from gateway.pipeline.decode import decode_records
from gateway.pipeline.geo import locate
from gateway.pipeline.run import evaluate
from gateway.pipeline.shape import Shaped
from gateway.policy.bundle import PolicyBundle
from gateway.policy.loader import load_bundle
from gateway.policy.rules import RuleId
from gateway.policy.schema import (
    BEIJING,
    ExportDataClass,
    FieldCategory,
    IdentifierMode,
    LegalBasis,
    LegalBasisKind,
    Qualification,
    QualificationKind,
)
from gateway.state.snapshot import (
    ConsentBook,
    CrossBorderCount,
    StateSnapshot,
    TripState,
)

VIN = "LSVAU2181P2100001"  # consents: usage-based-insurance (c-0001), navigation-map (c-0002)
VIN_TRAFFIC = "LFV2A21K9R4100002"  # traffic-management until 2026-03-01 (c-0003)
VIN_REVOKED = "LGXCE6CB2R0100003"  # usage-based-insurance, revoked 2025-06-01T18:45+08
VIN_NONE = "LVHRU585XN6100077"  # no consent at all

CITY = (31.2304, 121.4737)  # People's Square: no zone within 5 km cells
PROHIBITED = (31.300, 121.552)  # inside example-prohibited-1
SENSITIVE_1 = (31.174, 121.400)  # inside example-sensitive-1 (between ring and hole)
SENSITIVE_2 = (31.249, 121.329)  # inside example-sensitive-2, first part
ABROAD = (59.9, 30.3)  # outside the GCJ-02 area


def beijing(*args: int) -> float:
    """Unix time of a Beijing wall-clock time."""
    return datetime(*args, tzinfo=BEIJING).timestamp()


NOW = beijing(2026, 1, 15, 10, 0)


def keys(subscriber: str) -> bytes:
    return hashlib.sha256(b"test-key:" + subscriber.encode()).digest()


@pytest.fixture(scope="module")
def bundle() -> PolicyBundle:
    return load_bundle()


def record(
    vin: str = VIN,
    t: float = NOW - 60,
    where: tuple[float, float] | None = CITY,
    **signals: Any,
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "Vehicle.VehicleIdentification.VIN": vin,
        "Vehicle.CurrentLocation.Timestamp": t,
    }
    if where is not None:
        out["Vehicle.CurrentLocation.Latitude"] = where[0]
        out["Vehicle.CurrentLocation.Longitude"] = where[1]
    out.update({k.replace("__", "."): v for k, v in signals.items()})
    return out


def mid_trip(bundle: PolicyBundle, records: list[dict[str, Any]], now: float) -> StateSnapshot:
    """A state where every vehicle is far into a trip (no start trimming)."""
    trips = {}
    for rec in records:
        if not isinstance(rec, dict):
            continue
        vin = rec.get("Vehicle.VehicleIdentification.VIN")
        t = rec.get("Vehicle.CurrentLocation.Timestamp")
        if isinstance(vin, str) and isinstance(t, (int, float)):
            start = min(trips[vin].start_time if vin in trips else t - 1, t - 1)
            trips[vin] = TripState(start, math.nan, math.nan, math.inf, start, math.nan, math.nan)
    return StateSnapshot(now=now, consents=ConsentBook.from_policy(bundle.consents), trips=trips)


def run(
    bundle: PolicyBundle,
    records: list[dict[str, Any]],
    *,
    now: float = NOW,
    state: StateSnapshot | None = None,
) -> tuple[Decisions, Shaped]:
    batch = decode_records(records, bundle.aliases)
    snapshot = state if state is not None else mid_trip(bundle, records, now)
    return evaluate(batch, bundle, snapshot, keys)


def tweak(bundle: PolicyBundle, sub_id: str, **changes: Any) -> PolicyBundle:
    """The bundle with one subscriber changed (``view={...}`` changes its view)."""
    sub = bundle.subscribers[sub_id]
    view = changes.pop("view", None)
    if view is not None:
        changes["view"] = sub.view.model_copy(update=view)
    subs = dict(bundle.subscribers)
    subs[sub_id] = sub.model_copy(update=changes)
    return dataclasses.replace(bundle, subscribers=MappingProxyType(subs))


def index(d: Decisions, sub_id: str) -> int:
    return d.plan.subscribers.index(sub_id)


def output(d: Decisions, sh: Shaped, sub_id: str, row: int) -> dict[str, Any] | None:
    s = index(d, sub_id)
    for i in range(len(sh)):
        if sh.subscriber[i] == s and sh.row[i] == row:
            return sh.views[i]
    for view, hs, hr in zip(sh.held, sh.held_subscriber, sh.held_row, strict=True):
        if hs == s and hr == row:
            return dict(view.view)
    return None


# --- the table -----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    subscriber: str
    records: list[dict[str, Any]]
    verdict: str
    cites: tuple[RuleId, ...] = ()
    not_cites: tuple[RuleId, ...] = ()
    row: int = -1
    now: float = NOW
    change: Callable[[PolicyBundle], PolicyBundle] | None = None
    state: Callable[[PolicyBundle, list[dict[str, Any]], float], StateSnapshot] | None = None
    check: Callable[[dict[str, Any] | None], bool] | None = None


def no_location(out: dict[str, Any] | None) -> bool:
    return out is not None and out.get("location") is None


def gcj(precision: float) -> Callable[[dict[str, Any] | None], bool]:
    def ok(out: dict[str, Any] | None) -> bool:
        loc = out and out.get("location")
        return bool(
            loc
            and loc["datum"] == "GCJ-02"
            and loc["precision_m"] == precision
            and "lat_gcj02" in loc
            and "lat_wgs84" not in loc
        )

    return ok


def counts(n: int, data_class: ExportDataClass = ExportDataClass.PERSONAL_INFORMATION) -> Any:
    """A state where oem-hq-de has already received ``n`` vehicles' PI this year."""

    def make(bundle: PolicyBundle, records: list[dict[str, Any]], now: float) -> StateSnapshot:
        base = mid_trip(bundle, records, now)
        year = datetime.fromtimestamp(now, BEIJING).year
        return dataclasses.replace(
            base,
            crossborder={("oem-hq-de", year, data_class): CrossBorderCount(n, frozenset({VIN}))},
        )

    return make


def fresh(bundle: PolicyBundle, records: list[dict[str, Any]], now: float) -> StateSnapshot:
    return StateSnapshot(now=now, consents=ConsentBook.from_policy(bundle.consents))


def with_assessment(bundle: PolicyBundle) -> PolicyBundle:
    sub = bundle.subscribers["oem-hq-de"]
    basis = LegalBasis(
        kind=LegalBasisKind.SECURITY_ASSESSMENT,
        id="TEST-SA-1",
        covers=(ExportDataClass.PERSONAL_INFORMATION,),
        expires=datetime(2027, 12, 31).date(),
    )
    return tweak(bundle, "oem-hq-de", legal_bases=(*sub.legal_bases, basis))


def with_geodata_approval(bundle: PolicyBundle) -> PolicyBundle:
    sub = bundle.subscribers["oem-hq-de"]
    extra = (
        LegalBasis(
            kind=LegalBasisKind.GEODATA_EXPORT_APPROVAL,
            id="TEST-GEO-1",
            covers=(ExportDataClass.GEOGRAPHIC_DATA,),
            expires=datetime(2027, 12, 31).date(),
        ),
        LegalBasis(
            kind=LegalBasisKind.STANDARD_CONTRACT,
            id="TEST-SCC-SPI",
            covers=(ExportDataClass.SENSITIVE_PERSONAL_INFORMATION,),
            expires=datetime(2027, 12, 31).date(),
        ),
    )
    return tweak(bundle, "oem-hq-de", legal_bases=(*sub.legal_bases, *extra))


GBA_CONTRACT = LegalBasis(
    kind=LegalBasisKind.GBA_STANDARD_CONTRACT,
    id="TEST-GBA-1",
    covers=(ExportDataClass.PERSONAL_INFORMATION,),
    expires=datetime(2027, 12, 31).date(),
)


def moved(meters: float, base: tuple[float, float] = CITY) -> tuple[float, float]:
    return (base[0] + meters / 111_320.0, base[1])


GEOD = Geod(ellps="WGS84")


def geodesic(a: tuple[float, float], b: tuple[float, float]) -> float:
    return float(GEOD.inv(a[1], a[0], b[1], b[0])[2])


def north(metres: float, base: tuple[float, float] = CITY) -> tuple[float, float]:
    """The point ``metres`` due north of ``base`` on the WGS-84 ellipsoid."""
    lon, lat, _ = GEOD.fwd(base[1], base[0], 0.0, metres)
    return (float(lat), float(lon))


CASES = [
    Case(
        "qualified mainland subscriber gets raw WGS-84",
        "mapco-nav",
        [record()],
        "share",
        cites=(RuleId.GEO_RAW_REQUIRES_QUALIFICATION, RuleId.PI_TRAJECTORY_CONSENT),
        not_cites=(RuleId.GEO_GRID_FLOOR,),
        check=lambda o: o is not None and o["location"]["lat_wgs84"] == CITY[0],
    ),
    Case(
        "expired qualification falls back to the floor grid in GCJ-02",
        "mapco-nav",
        [record(t=beijing(2029, 1, 5, 9, 0), Vehicle__CurrentLocation__Altitude=12.3)],
        "redact",  # its consents have expired by then, too: per-trip pseudonym
        now=beijing(2029, 1, 5, 10, 0),
        cites=(
            RuleId.GEO_RAW_REQUIRES_QUALIFICATION,
            RuleId.GEO_GRID_FLOOR,
            RuleId.GEO_DATUM_GCJ02,
            RuleId.VIEW_PRECISION,
        ),
        check=lambda o: gcj(50)(o) and o is not None and "alt_m" not in o["location"],
    ),
    Case(
        "unqualified subscriber: grid and GCJ-02",
        "insureco-ubi",
        [record()],
        "share",
        cites=(RuleId.GEO_GRID_FLOOR, RuleId.GEO_DATUM_GCJ02, RuleId.VIEW_PRECISION),
        not_cites=(RuleId.GEO_RAW_REQUIRES_QUALIFICATION,),
        check=gcj(1000),
    ),
    Case(
        "outside the GCJ-02 area the position is removed, never sent as WGS-84",
        "insureco-ubi",
        [record(where=ABROAD)],
        "redact",
        cites=(RuleId.GEO_DATUM_UNAVAILABLE,),
        check=no_location,
    ),
    Case(
        "altitude removed",
        "insureco-ubi",
        [record(Vehicle__CurrentLocation__Altitude=12.3)],
        "share",
        cites=(RuleId.GEO_ALTITUDE_REMOVED,),
        check=lambda o: o is not None and "alt_m" not in o["location"],
    ),
    Case(
        "altitude coarsened",
        "sh-traffic",
        [record(VIN_TRAFFIC, Vehicle__CurrentLocation__Altitude=37.3)],
        "share",
        cites=(RuleId.GEO_ALTITUDE_COARSENED,),
        check=lambda o: o is not None and o["location"]["alt_m"] == 50.0,
    ),
    Case(
        "geo.altitude-coarsened: never finer than the altitude floor without a qualification",
        "sh-traffic",
        [record(VIN_TRAFFIC, Vehicle__CurrentLocation__Altitude=19.7)],
        "share",
        change=lambda b: tweak(b, "sh-traffic", view={"altitude_step_m": 0.1}),
        cites=(RuleId.GEO_ALTITUDE_COARSENED, RuleId.GEO_GRID_FLOOR),
        check=lambda o: (
            o is not None and o["location"]["alt_m"] == 0.0 and o["location"]["alt_step_m"] == 50
        ),
    ),
    Case(
        "no coordinates abroad without a geodata export approval",
        "oem-hq-de",
        [record()],
        "redact",
        cites=(RuleId.GEO_MAINLAND_ONLY, RuleId.XBORDER_EXEMPT),
        check=no_location,
    ),
    Case(
        "a geodata export approval lets the floor-or-coarser grid go abroad",
        "oem-hq-de",
        [record(t=NOW - 3600)],
        "share",
        change=with_geodata_approval,
        state=lambda b, r, now: dataclasses.replace(
            mid_trip(b, r, now),
            consents=ConsentBook(
                [Consent("c-pq", VIN, "product-quality", NOW - 86400, NOW + 86400)]
            ),
        ),
        cites=(RuleId.XBORDER_TIER_CONTRACT, RuleId.XBORDER_EXEMPT),
        not_cites=(RuleId.GEO_MAINLAND_ONLY,),
        check=gcj(5000),
    ),
    Case(
        "prohibited zone blocks everyone not authorised",
        "mapco-nav",
        [record(where=PROHIBITED)],
        "block",
        cites=(RuleId.ZONE_PROHIBITED,),
    ),
    Case(
        "sensitive zone removes the position and location-derived fields",
        "insureco-ubi",
        [record(where=SENSITIVE_2, Vehicle__Speed=57.0)],
        "redact",
        cites=(RuleId.ZONE_SENSITIVE, RuleId.PI_LOCATION_DERIVED),
        check=lambda o: no_location(o) and o is not None and "Vehicle.Speed" not in o["signals"],
    ),
    Case(
        "an authorised mainland subscriber receives the located record",
        "mapco-nav",
        [record(where=SENSITIVE_2)],
        "share",
        cites=(RuleId.ZONE_AUTHORISED,),
        not_cites=(RuleId.ZONE_SENSITIVE,),
        check=lambda o: o is not None and o["location"] is not None,
    ),
    Case(
        "authorisation for one zone does not cover another",
        "sh-traffic",
        [record(VIN_TRAFFIC, where=SENSITIVE_2)],
        "redact",
        cites=(RuleId.ZONE_SENSITIVE,),
        not_cites=(RuleId.ZONE_AUTHORISED,),
        check=no_location,
    ),
    Case(
        "sh-traffic is authorised for example-sensitive-1",
        "sh-traffic",
        [record(VIN_TRAFFIC, where=SENSITIVE_1)],
        "share",
        cites=(RuleId.ZONE_AUTHORISED,),
        check=gcj(50),
    ),
    Case(
        "an expired zone authorisation counts as absent",
        "sh-traffic",
        [record(VIN_TRAFFIC, t=beijing(2027, 1, 2, 9, 0), where=SENSITIVE_1)],
        "redact",
        now=beijing(2027, 1, 2, 10, 0),
        cites=(RuleId.ZONE_SENSITIVE,),
        not_cites=(RuleId.ZONE_AUTHORISED,),
        check=no_location,
    ),
    Case(
        "an authorisation does not apply to a subscriber storing abroad",
        "mapco-nav",
        [record(where=SENSITIVE_2)],
        "redact",
        change=lambda b: tweak(
            b,
            "mapco-nav",
            storage_region="HK",
            impact_assessment=b.subscribers["oem-hq-de"].impact_assessment,
        ),
        cites=(RuleId.ZONE_SENSITIVE, RuleId.XBORDER_IMPORTANT_DATA),
        not_cites=(RuleId.ZONE_AUTHORISED,),
        check=no_location,
    ),
    Case(
        "important data never goes abroad: prohibited zone",
        "oem-hq-de",
        [record(where=PROHIBITED)],
        "block",
        cites=(RuleId.ZONE_PROHIBITED, RuleId.XBORDER_IMPORTANT_DATA),
    ),
    Case(
        "time truncated to the view's precision",
        "insureco-ubi",
        [record(t=NOW - 59)],
        "share",
        cites=(RuleId.VIEW_TIME_PRECISION,),
        check=lambda o: o is not None and o["time"] == "2026-01-15T01:59:00Z",
    ),
    Case(
        "a second record within the minimum interval is not sent",
        "insureco-ubi",
        [record(t=NOW - 60), record(t=NOW - 50, where=moved(600))],
        "block",
        row=1,
        cites=(RuleId.VIEW_DOWNSAMPLE,),
    ),
    Case(
        "fields outside the view are removed",
        "mapco-nav",
        [record(Vehicle__Powertrain__TractionBattery__StateOfCharge__Current=80.0)],
        "share",
        cites=(RuleId.VIEW_FIELD_NOT_ALLOWED,),
        check=lambda o: o is not None and o["signals"] == {},
    ),
    Case(
        "unclassified fields are removed and reported, not blocking",
        "insureco-ubi",
        [record(**{"oem_secret": 1})],
        "share",
        cites=(RuleId.FIELD_UNCLASSIFIED,),
        check=lambda o: o is not None and "oem_secret" not in o["signals"],
    ),
    Case(
        "a trajectory with consent",
        "insureco-ubi",
        [record()],
        "share",
        cites=(RuleId.PI_TRAJECTORY_CONSENT, RuleId.PI_VIN_PSEUDONYM),
    ),
    Case(
        "no consent: the location is dropped",
        "insureco-ubi",
        [record(VIN_NONE, Vehicle__Speed=57.0)],
        "redact",
        cites=(RuleId.PI_NO_CONSENT_DROP_LOCATION,),
        not_cites=(RuleId.PI_TRAJECTORY_CONSENT,),
        check=lambda o: no_location(o) and o is not None and "Vehicle.Speed" not in o["signals"],
    ),
    Case(
        "before the withdrawal the consent holds",
        "insureco-ubi",
        [record(VIN_REVOKED, t=beijing(2025, 6, 1, 18, 0))],
        "share",
        now=beijing(2025, 6, 1, 18, 1),
        cites=(RuleId.PI_TRAJECTORY_CONSENT,),
    ),
    Case(
        "after the withdrawal every later record goes without location",
        "insureco-ubi",
        [record(VIN_REVOKED, t=beijing(2025, 6, 1, 19, 0))],
        "redact",
        now=beijing(2025, 6, 1, 19, 1),
        cites=(RuleId.PI_NO_CONSENT_DROP_LOCATION,),
        check=no_location,
    ),
    Case(
        "an expired consent counts as absent: per-trip pseudonym",
        "sh-traffic",
        [record(VIN_TRAFFIC, t=beijing(2026, 3, 2, 9, 0))],
        "share",
        now=beijing(2026, 3, 2, 10, 0),
        cites=(RuleId.PI_NO_CONSENT_TRIP_PSEUDONYM,),
        check=lambda o: o is not None and o["vehicle"].startswith("pt-"),
    ),
    Case(
        "no consent: a persistent identifier becomes a per-trip pseudonym",
        "mapco-nav",
        [record(VIN_NONE)],
        "redact",
        cites=(RuleId.PI_NO_CONSENT_TRIP_PSEUDONYM,),
        check=lambda o: o is not None and o["vehicle"].startswith("pt-"),
    ),
    Case(
        "the VIN is disclosed only where the view allows it",
        "mapco-nav",
        [record()],
        "share",
        change=lambda b: tweak(
            b,
            "mapco-nav",
            view={
                "identifier": IdentifierMode.VIN,
                "fields": ("Vehicle.VehicleIdentification.VIN",),
            },
        ),
        cites=(RuleId.PI_VIN_DISCLOSED,),
        not_cites=(RuleId.PI_VIN_PSEUDONYM,),
        check=lambda o: o is not None and o["vehicle"] == VIN,
    ),
    Case(
        "trip start is trimmed",
        "insureco-ubi",
        [record(), record(t=NOW - 29, where=moved(100))],
        "block",
        row=0,
        state=fresh,
        cites=(RuleId.PI_TRIP_TRIM,),
    ),
    Case(
        "trip end is held back until the vehicle moves on",
        "sh-traffic",
        [record(VIN_TRAFFIC)],
        "held",
        cites=(RuleId.PI_TRIP_TRIM,),
    ),
    Case(
        "location-derived fields coarsened beside a coarse position",
        "insureco-ubi",
        [record(Vehicle__Speed=57.0, Vehicle__CurrentLocation__Heading=359.0)],
        "share",
        cites=(RuleId.PI_LOCATION_DERIVED,),
        check=lambda o: (
            o is not None
            and o["signals"] == {"Vehicle.Speed": 60.0, "Vehicle.CurrentLocation.Heading": 0.0}
        ),
    ),
    Case(
        "location-derived fields at full precision only beside raw positions",
        "mapco-nav",
        [record(Vehicle__Speed=57.3)],
        "share",
        not_cites=(RuleId.PI_LOCATION_DERIVED,),
        check=lambda o: o is not None and o["signals"] == {"Vehicle.Speed": 57.3},
    ),
    Case(
        "below the first threshold an export is exempt",
        "oem-hq-de",
        [record(VIN_NONE)],
        "redact",
        cites=(RuleId.XBORDER_EXEMPT,),
    ),
    Case(
        "crossing into the contract tier, covered by the standard contract",
        "oem-hq-de",
        [record(VIN_NONE)],
        "redact",
        state=counts(99_999),
        cites=(RuleId.XBORDER_TIER_CONTRACT,),
        not_cites=(RuleId.XBORDER_EXEMPT,),
    ),
    Case(
        "crossing into the assessment tier without an assessment is blocked",
        "oem-hq-de",
        [record(VIN_NONE)],
        "block",
        state=counts(999_999),
        cites=(RuleId.XBORDER_BASIS_MISSING, RuleId.XBORDER_TIER_ASSESSMENT),
    ),
    Case(
        "an already counted vehicle at the threshold still goes",
        "oem-hq-de",
        [record(VIN)],
        "redact",
        state=counts(100_000),
        cites=(RuleId.XBORDER_TIER_CONTRACT,),
    ),
    Case(
        "xborder.tier-assessment: PI of more than 100,000 people is important data (vehicles)",
        "oem-hq-de",
        [record(VIN_NONE)],
        "block",
        state=counts(100_000),
        cites=(RuleId.XBORDER_BASIS_MISSING, RuleId.XBORDER_TIER_ASSESSMENT),
        not_cites=(RuleId.XBORDER_TIER_CONTRACT,),
    ),
    Case(
        "without the automobile reading the general tiers let a contract cover 100,001 people",
        "oem-hq-de",
        [record(VIN_NONE)],
        "redact",
        state=counts(100_000),
        change=lambda b: dataclasses.replace(
            b,
            rules=b.rules.model_copy(
                update={
                    "crossborder": b.rules.crossborder.model_copy(
                        update={"vehicle_pi_over_100k_important": False}
                    )
                }
            ),
        ),
        cites=(RuleId.XBORDER_TIER_CONTRACT,),
    ),
    Case(
        "with a security assessment the assessment tier is covered",
        "oem-hq-de",
        [record(VIN_NONE)],
        "redact",
        change=with_assessment,
        state=counts(999_999),
        cites=(RuleId.XBORDER_TIER_ASSESSMENT,),
        not_cites=(RuleId.XBORDER_BASIS_MISSING,),
    ),
    Case(
        "an expired standard contract counts as absent",
        "oem-hq-de",
        [record(VIN, t=beijing(2027, 4, 2, 9, 0))],
        "block",
        now=beijing(2027, 4, 2, 10, 0),
        state=counts(100_000),
        cites=(RuleId.XBORDER_BASIS_MISSING, RuleId.XBORDER_TIER_CONTRACT),
    ),
    Case(
        "xborder.basis-missing: heart rate is sensitive PI, abroad only under a basis covering it",
        "oem-hq-de",
        [record(VIN_NONE, where=None, Vehicle__Driver__HeartRate=72)],
        "block",
        change=lambda b: tweak(b, "oem-hq-de", view={"categories": ("time", "personal")}),
        cites=(RuleId.XBORDER_BASIS_MISSING, RuleId.XBORDER_TIER_CONTRACT),
    ),
    Case(
        "xborder.tier-contract: a driver id abroad counts as sensitive PI and uses its basis",
        "oem-hq-de",
        [record(VIN_NONE, where=None, Vehicle__Driver__Identifier__Subject="driver-7")],
        "share",
        change=lambda b: with_geodata_approval(
            tweak(b, "oem-hq-de", view={"categories": ("time", "personal")})
        ),
        cites=(RuleId.XBORDER_TIER_CONTRACT, RuleId.XBORDER_EXEMPT),
        check=lambda o: (
            o is not None and o["signals"] == {"Vehicle.Driver.Identifier.Subject": "driver-7"}
        ),
    ),
    Case(
        "xborder.important-data: a camera-frame URI never goes abroad without an assessment",
        "oem-hq-de",
        [record(VIN_NONE, where=None, Vehicle__ADAS__Camera__Front__Image="s3://f/1.jpg")],
        "redact",
        change=lambda b: tweak(b, "oem-hq-de", view={"categories": ("time", "imagery")}),
        cites=(RuleId.XBORDER_IMPORTANT_DATA,),
        not_cites=(RuleId.VIEW_FIELD_NOT_ALLOWED,),
        check=lambda o: o is not None and o["signals"] == {},
    ),
    Case(
        "view.important-data: a mainland view gets a camera frame only for a purpose naming it",
        "insureco-ubi",
        [record(where=None, Vehicle__ADAS__Camera__Front__Image="s3://f/1.jpg")],
        "redact",
        change=lambda b: tweak(
            b, "insureco-ubi", view={"fields": ("Vehicle.ADAS.Camera.Front.Image",)}
        ),
        cites=(RuleId.VIEW_IMPORTANT_DATA,),
        check=lambda o: o is not None and o["signals"] == {},
    ),
    Case(
        "a purpose the camera field names lets the frame reference go to a mainland view",
        "mapco-nav",
        [record(Vehicle__ADAS__Camera__Front__Image="s3://f/1.jpg")],
        "share",
        change=lambda b: tweak(
            b, "mapco-nav", view={"fields": ("Vehicle.ADAS.Camera.Front.Image",)}
        ),
        not_cites=(RuleId.VIEW_IMPORTANT_DATA,),
        check=lambda o: (
            o is not None and o["signals"] == {"Vehicle.ADAS.Camera.Front.Image": "s3://f/1.jpg"}
        ),
    ),
    Case(
        "xborder.impact-assessment: without a PI impact assessment no PI goes abroad",
        "oem-hq-de",
        [record(VIN_NONE)],
        "block",
        change=lambda b: tweak(b, "oem-hq-de", impact_assessment=None),
        cites=(RuleId.XBORDER_IMPACT_ASSESSMENT,),
        not_cites=(RuleId.XBORDER_EXEMPT,),
    ),
    Case(
        "an impact assessment completed after the decision day counts as absent",
        "oem-hq-de",
        [record(VIN_NONE, t=beijing(2025, 2, 14, 9, 0))],
        "block",
        now=beijing(2025, 2, 14, 10, 0),
        cites=(RuleId.XBORDER_IMPACT_ASSESSMENT,),
    ),
    Case(
        "xborder.tier-contract: a GBA standard contract covers a Hong Kong recipient",
        "oem-hq-de",
        [record(VIN_NONE)],
        "redact",
        state=counts(99_999),
        change=lambda b: tweak(
            b, "oem-hq-de", region="HK", storage_region="HK", legal_bases=(GBA_CONTRACT,)
        ),
        cites=(RuleId.XBORDER_TIER_CONTRACT,),
        not_cites=(RuleId.XBORDER_BASIS_MISSING,),
    ),
    Case(
        "xborder.basis-missing: a GBA standard contract does not cover a recipient in Germany",
        "oem-hq-de",
        [record(VIN_NONE)],
        "block",
        state=counts(99_999),
        change=lambda b: tweak(b, "oem-hq-de", legal_bases=(GBA_CONTRACT,)),
        cites=(RuleId.XBORDER_BASIS_MISSING, RuleId.XBORDER_TIER_CONTRACT),
    ),
    Case(
        "no consent, masked in a sensitive zone: still the per-trip pseudonym (issue 10.1)",
        "mapco-nav",
        [record(VIN_NONE, where=SENSITIVE_1)],
        "redact",
        cites=(RuleId.ZONE_SENSITIVE, RuleId.PI_NO_CONSENT_TRIP_PSEUDONYM),
        check=lambda o: no_location(o) and o is not None and o["vehicle"].startswith("pt-"),
    ),
    Case(
        "no consent, no position: the per-trip pseudonym all the same",
        "mapco-nav",
        [record(VIN_NONE, t=NOW - 60), record(VIN_NONE, t=NOW - 30, where=None)],
        "redact",
        row=1,
        cites=(RuleId.PI_NO_CONSENT_TRIP_PSEUDONYM,),
        check=lambda o: o is not None and o["vehicle"].startswith("pt-"),
    ),
    Case(
        "a record without a position inherits its trip's sensitive zone",
        "insureco-ubi",
        [
            record(t=NOW - 120, where=SENSITIVE_2),
            record(t=NOW - 60, where=None, Vehicle__Speed=57.0),
        ],
        "redact",
        row=1,
        cites=(RuleId.ZONE_SENSITIVE, RuleId.PI_LOCATION_DERIVED),
        not_cites=(RuleId.PI_TRAJECTORY_CONSENT,),
        check=lambda o: no_location(o) and o is not None and "Vehicle.Speed" not in o["signals"],
    ),
    Case(
        "a record without a position inherits its trip's prohibited zone",
        "mapco-nav",
        [record(t=NOW - 60, where=PROHIBITED), record(t=NOW - 30, where=None, Vehicle__Speed=5.0)],
        "block",
        row=1,
        cites=(RuleId.ZONE_PROHIBITED,),
    ),
    Case(
        "a record without a position inherits the zone of the last batch's position",
        "insureco-ubi",
        [record(where=None, Vehicle__Speed=57.0)],
        "redact",
        state=lambda b, r, now: dataclasses.replace(
            mid_trip(b, r, now),
            trips={VIN: TripState(NOW - 900, *CITY, math.inf, NOW - 90, *SENSITIVE_2)},
        ),
        cites=(RuleId.ZONE_SENSITIVE, RuleId.PI_LOCATION_DERIVED),
        check=lambda o: o is not None and "Vehicle.Speed" not in o["signals"],
    ),
    Case(
        "a record without a position outside any zone keeps its coarsened fields",
        "insureco-ubi",
        [record(t=NOW - 120), record(t=NOW - 60, where=None, Vehicle__Speed=57.0)],
        "share",
        row=1,
        not_cites=(RuleId.ZONE_SENSITIVE,),
        check=lambda o: o is not None and o["signals"] == {"Vehicle.Speed": 60.0},
    ),
    Case(
        "consent is judged at the decision time too: withdrawn since, no trajectory",
        "insureco-ubi",
        [record(VIN_REVOKED, t=beijing(2025, 6, 1, 18, 0))],
        "redact",
        now=beijing(2025, 6, 1, 19, 1),
        cites=(RuleId.PI_NO_CONSENT_DROP_LOCATION,),
        not_cites=(RuleId.PI_TRAJECTORY_CONSENT,),
        check=no_location,
    ),
    Case(
        "consent is judged at the decision time too: expired since, per-trip pseudonym",
        "mapco-nav",
        [record(VIN, t=beijing(2027, 1, 10, 9, 0))],
        "redact",
        now=beijing(2027, 1, 10, 10, 0),
        cites=(RuleId.PI_NO_CONSENT_TRIP_PSEUDONYM,),
        not_cites=(RuleId.PI_TRAJECTORY_CONSENT,),
        check=lambda o: o is not None and o["vehicle"].startswith("pt-"),
    ),
    Case(
        "a per-trip pseudonym never travels with a value that links trips (odometer)",
        "sh-traffic",
        [record(VIN_TRAFFIC, Vehicle__TraveledDistance=50989.8, Vehicle__Speed=57.0)],
        "held",
        cites=(RuleId.PI_VIN_PSEUDONYM,),
        check=lambda o: o is not None and o["signals"] == {"Vehicle.Speed": 60.0},
    ),
    Case(
        "no consent, per-trip pseudonym: the odometer is withheld",
        "mapco-nav",
        [record(VIN_NONE, Vehicle__TraveledDistance=50989.8, Vehicle__Speed=57.3)],
        "redact",
        cites=(RuleId.PI_NO_CONSENT_TRIP_PSEUDONYM,),
        check=lambda o: o is not None and o["signals"] == {"Vehicle.Speed": 57.3},
    ),
    Case(
        "with consent and a stable pseudonym the odometer goes",
        "mapco-nav",
        [record(VIN, Vehicle__TraveledDistance=50989.8)],
        "share",
        cites=(RuleId.PI_TRAJECTORY_CONSENT,),
        check=lambda o: o is not None and o["signals"] == {"Vehicle.TraveledDistance": 50989.8},
    ),
    Case(
        "under a per-trip pseudonym the trip start is trimmed, whatever the view's trim",
        "mapco-nav",
        [record(VIN_NONE, t=NOW - 60), record(VIN_NONE, t=NOW - 50, where=north(150.0))],
        "block",
        row=1,
        state=fresh,
        cites=(RuleId.PI_TRIP_TRIM,),
    ),
    Case(
        "under a stable pseudonym the view's own trim (none) applies",
        "mapco-nav",
        [record(VIN, t=NOW - 60), record(VIN, t=NOW - 50, where=north(150.0))],
        "share",
        row=1,
        state=fresh,
        not_cites=(RuleId.PI_TRIP_TRIM,),
    ),
    Case(
        "a record without a timestamp is blocked for everyone",
        "mapco-nav",
        [{"Vehicle.VehicleIdentification.VIN": VIN, "Vehicle.CurrentLocation.Latitude": 31.2}],
        "block",
        cites=(RuleId.INPUT_INVALID,),
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_rule_table(bundle: PolicyBundle, case: Case) -> None:
    b = case.change(bundle) if case.change else bundle
    state = case.state(b, case.records, case.now) if case.state else None
    d, sh = run(b, case.records, now=case.now, state=state)
    s = index(d, case.subscriber)
    row = case.row % len(case.records)
    verdict = Verdict(int(d.verdict[s, row])).label
    if verdict == "held" and case.verdict != "held":  # what it becomes when released
        verdict = "redact" if d.redacted[s, row] else "share"
    cited = set(d.rule_ids(s, row))
    assert verdict == case.verdict, (verdict, sorted(cited))
    assert {str(r) for r in case.cites} <= cited, sorted(cited)
    assert not ({str(r) for r in case.not_cites} & cited), sorted(cited)
    assert cited <= set(b.rules.catalogue), "cites a rule the catalogue does not describe"
    if case.check is not None:
        assert case.check(output(d, sh, case.subscriber, row)), output(d, sh, case.subscriber, row)


def test_the_table_covers_every_rule_of_the_bundle(bundle: PolicyBundle) -> None:
    covered = {str(r) for case in CASES for r in case.cites}
    assert covered == set(bundle.rules.catalogue)
    assert covered == {str(r) for r in RuleId}


def test_rejected_rows_are_blocked_for_everyone_with_their_reason(bundle: PolicyBundle) -> None:
    records: list[Any] = [
        [1, 2],
        {"Vehicle.CurrentLocation.Timestamp": NOW},
        record(t=None),  # type: ignore[arg-type]
        {**record(), "Vehicle.CurrentLocation.Latitude": "31.2"},
        record(),
    ]
    d, _ = run(bundle, records)
    assert [d.reason(r) for r in range(5)] == [
        "not-an-object",
        "missing-vehicle-id",
        "bad-timestamp",
        "non-numeric-coordinate",
        None,
    ]
    for s in range(len(d.plan.views)):
        for row in range(4):
            assert d.verdict[s, row] == Verdict.BLOCK
            assert d.rule_ids(s, row) == ("input.invalid",)
            assert not d.position[s, row]


def test_every_cited_rule_is_in_the_catalogue_on_a_busy_batch(bundle: PolicyBundle) -> None:
    places = [CITY, PROHIBITED, SENSITIVE_1, SENSITIVE_2, ABROAD, None]
    vins = [VIN, VIN_TRAFFIC, VIN_REVOKED, VIN_NONE]
    records = [
        record(v, t=NOW - 600 + 7 * i, where=places[i % len(places)], Vehicle__Speed=3.0 * i)
        for i, v in enumerate(vins * 6)
    ]
    d, _ = run(bundle, records, state=fresh(bundle, records, NOW))
    catalogue = set(bundle.rules.catalogue)
    for bits in np.unique(d.rules):
        assert set(rule_ids(int(bits))) <= catalogue


# --- trips, held views and state -----------------------------------------------------------


def trace(n: int, step_m: float, vin: str = VIN, t0: float = NOW - 3600) -> list[dict[str, Any]]:
    """``n`` records 10 s apart, moving ``step_m`` north each time."""
    return [record(vin, t=t0 + 10 * i, where=moved(step_m * i)) for i in range(n)]


def test_start_trimming_waits_until_the_vehicle_is_far_enough_from_the_start(
    bundle: PolicyBundle,
) -> None:
    records = trace(12, 60.0)  # 0, 60, ..., 660 m from the start
    d, _ = run(bundle, records, state=fresh(bundle, records, NOW))
    s = index(d, "sh-traffic")  # 200 m trim, 5 s interval
    labels = [Verdict(int(v)).label for v in d.verdict[s]]
    # 0..180 m: trimmed start; from 240 m: sent (each released by a row >= 200 m further)
    assert labels[:4] == ["block"] * 4
    assert all(d.rule_ids(s, r) == ("pi.trip-trim",) for r in range(4))
    assert labels[4:8] == ["share"] * 4
    # the last rows wait for the vehicle to move 200 m on: held
    assert labels[-3:] == ["held"] * 3
    assert d.delta.trips[VIN].max_disp_m == pytest.approx(geodesic(CITY, moved(660)), abs=1e-6)


def test_held_views_are_released_by_a_later_batch(bundle: PolicyBundle) -> None:
    records = trace(6, 60.0)  # 0, 60, ..., 300 m, 10 s apart
    times = [r["Vehicle.CurrentLocation.Timestamp"] for r in records]
    state = mid_trip(bundle, records, NOW)
    d1, sh1 = run(bundle, records[:4], state=state)
    s = index(d1, "sh-traffic")  # trims 200 m: nothing in the first 180 m is released yet
    assert [Verdict(int(v)) for v in d1.verdict[s]] == [Verdict.HELD] * 4
    held = [h for h in sh1.held if h.subscriber == "sh-traffic"]
    assert [h.time for h in held] == times[:4]
    assert all(h.decision == "share" and "pi.trip-trim" in h.rules for h in held)
    state2 = state.apply(d1.delta, sh1.held)
    d2, sh2 = run(bundle, records[4:], state=state2)
    released = [h.time for h in d2.delta.released if h.subscriber == "sh-traffic"]
    assert released == times[:2]  # 240 m and 300 m are >= 200 m from 0 m and 60 m only
    assert not d2.delta.discarded
    state3 = state2.apply(d2.delta, sh2.held)
    left = sorted(h.time for h in state3.held if h.subscriber == "sh-traffic")
    assert left == times[2:]
    # one batch gives the same outcome: rows 0 and 1 shared, the rest held
    d, _ = run(bundle, records, state=state)
    assert [Verdict(int(v)) for v in d.verdict[s]] == [Verdict.SHARE] * 2 + [Verdict.HELD] * 4


def test_a_key_off_ends_the_trip_and_drops_what_was_held(bundle: PolicyBundle) -> None:
    records = trace(4, 30.0)
    records[-1]["Vehicle.LowVoltageSystemState"] = "OFF"
    d, sh = run(bundle, records)
    s = index(d, "sh-traffic")
    assert [Verdict(int(v)).label for v in d.verdict[s]] == ["block"] * 4
    assert all(d.rule_ids(s, r) == ("pi.trip-trim",) for r in range(4))
    assert d.delta.trips[VIN].ended
    assert not [h for h in sh.held if h.subscriber == "sh-traffic"]
    # the next record starts a new trip
    state = mid_trip(bundle, records, NOW).apply(d.delta, sh.held)
    d2, _ = run(bundle, [record(t=NOW - 3000, where=moved(1000))], state=state)
    assert d2.delta.trips[VIN].start_time == NOW - 3000


def test_a_gap_splits_trips_and_discards_held_views(bundle: PolicyBundle) -> None:
    records = trace(3, 30.0)
    d1, sh1 = run(bundle, records)
    state = mid_trip(bundle, records, NOW).apply(d1.delta, sh1.held)
    assert len(state.held) > 0
    gap = bundle.rules.trips.split_gap_s
    later = record(t=NOW - 3600 + 20 + gap + 1, where=moved(5000))
    d2, _ = run(bundle, [later], state=state)
    assert {h.key for h in d2.delta.discarded} == {h.key for h in state.held}
    assert d2.delta.trips[VIN].start_time == later["Vehicle.CurrentLocation.Timestamp"]
    assert len(state.apply(d2.delta).held) == 0


def test_held_views_are_dropped_when_the_trip_ends_in_the_next_batch(
    bundle: PolicyBundle,
) -> None:
    records = trace(5, 20.0)  # never 200 m from each other
    records[-1]["Vehicle.LowVoltageSystemState"] = "OFF"
    state = mid_trip(bundle, records, NOW)
    d1, sh1 = run(bundle, records[:3], state=state)
    state = state.apply(d1.delta, sh1.held)
    held = {h.key for h in state.held if h.subscriber == "sh-traffic"}
    assert len(held) == 3
    d2, sh2 = run(bundle, records[3:], state=state)
    assert held <= {h.key for h in d2.delta.discarded}  # the key-off ended the trip
    assert not d2.delta.released
    assert len(state.apply(d2.delta, sh2.held).held) == 0


def test_sweep_discards_held_views_of_quiet_vehicles(bundle: PolicyBundle) -> None:
    records = trace(3, 30.0)
    d, sh = run(bundle, records)
    state = mid_trip(bundle, records, NOW).apply(d.delta, sh.held)
    last = records[-1]["Vehicle.CurrentLocation.Timestamp"]
    assert sweep(state, bundle, last + 10).discarded == ()
    gone = sweep(state, bundle, last + bundle.rules.trips.split_gap_s + 1)
    assert {h.key for h in gone.discarded} == {h.key for h in state.held}
    assert len(state.apply(gone).held) == 0


def test_downsampling_carries_across_batches(bundle: PolicyBundle) -> None:
    records = [record(t=NOW - 100 + 10 * i, where=moved(600 * i)) for i in range(8)]
    state = mid_trip(bundle, records, NOW)
    d, _ = run(bundle, records, state=state)
    s = index(d, "insureco-ubi")  # 30 s
    whole = [Verdict(int(v)).label != "block" for v in d.verdict[s]]
    parts = []
    for chunk in (records[:3], records[3:5], records[5:]):
        dd, sh = run(bundle, chunk, state=state)
        parts += [Verdict(int(v)).label != "block" for v in dd.verdict[s]]
        state = state.apply(dd.delta, sh.held)
    assert whole == parts == [True, False, False, True, False, False, True, False]


def test_distance_is_geodesic_on_wgs84() -> None:
    rng = np.random.default_rng(4)
    lat1, lat2 = rng.uniform(18, 53, (2, 3, 40))
    lon1, lon2 = rng.uniform(73, 135, (2, 3, 40))
    lat2 = lat1 + (lat2 - lat1) * 1e-3
    lon2 = lon1 + (lon2 - lon1) * 1e-3
    want = GEOD.inv(lon1.ravel(), lat1.ravel(), lon2.ravel(), lat2.ravel())[2].reshape(3, 40)
    got = distance_m(lat1, lon1, lat2, lon2)
    assert got.shape == (3, 40) and np.allclose(got, want, rtol=0, atol=1e-6)
    column = distance_m(lat1[:, :1], lon1[:, :1], lat2, lon2)  # broadcast
    assert column.shape == (3, 40)
    assert distance_m(31.0, 121.0, *north(500, (31.0, 121.0))) == pytest.approx(500, abs=1e-6)
    assert np.isnan(distance_m(np.nan, 121.0, 31.0, 121.0))


def test_start_trimming_measures_on_the_ellipsoid(bundle: PolicyBundle) -> None:
    """199.6 m north of the start is inside a 200 m trim, though an equirectangular
    distance at 31 N calls it 200.4 m (issue 10.4)."""
    records = [record(VIN_TRAFFIC, t=NOW - 60, where=CITY)]
    records.append(record(VIN_TRAFFIC, t=NOW - 50, where=north(199.6)))
    records.append(record(VIN_TRAFFIC, t=NOW - 40, where=north(900.0)))
    records.append(record(VIN_TRAFFIC, t=NOW - 30, where=north(1500.0)))
    d, _ = run(bundle, records, state=fresh(bundle, records, NOW))
    s = index(d, "sh-traffic")  # 200 m trim
    assert [Verdict(int(v)).label for v in d.verdict[s]] == ["block", "block", "share", "held"]


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(st.floats(0, 360), st.floats(0, 150), st.booleans()), min_size=1, max_size=14
    ),
    st.sampled_from([18.5, 31.0, 45.0, 53.0]),
)
def test_no_released_view_is_within_the_trim_of_its_trip_start(
    bundle: PolicyBundle, legs: list[tuple[float, float, bool]], lat0: float
) -> None:
    """Against pyproj.Geod: a view goes only once its trip has been ``trip_trim_m`` from
    its start, and only once the vehicle has been seen that far from the view's record."""
    here = (lat0, 121.4737 if lat0 < 40 else 125.0)
    points = [here]
    for bearing, step, _ in legs:
        lon, lat, _ = GEOD.fwd(here[1], here[0], bearing, step)
        here = (float(lat), float(lon))
        points.append(here)
    records = [record(VIN_TRAFFIC, t=NOW - 600 + 10 * i, where=p) for i, p in enumerate(points)]
    d, _ = run(bundle, records, state=fresh(bundle, records, NOW))
    s = index(d, "sh-traffic")
    trim = bundle.subscribers["sh-traffic"].view.trip_trim_m
    for i, v in enumerate(d.verdict[s].tolist()):
        if v in (Verdict.SHARE, Verdict.REDACT):
            assert max(geodesic(points[0], p) for p in points[: i + 1]) >= trim
            assert max(geodesic(points[i], p) for p in points[i:]) >= trim


# --- cross-border gate ---------------------------------------------------------------------


def test_crossborder_gate_counts_distinct_vehicles_in_order(bundle: PolicyBundle) -> None:
    sub = bundle.subscribers["oem-hq-de"]
    rules = bundle.rules.crossborder
    day = datetime(2026, 1, 15).date()
    key = ("oem-hq-de", 2026, ExportDataClass.PERSONAL_INFORMATION)
    counts = {key: CrossBorderCount(99_998, frozenset({"A"}))}
    result = crossborder_gate(sub, rules, day, 2026, counts, ["A", "B", "B", "C"], [False] * 4)
    assert result.allowed == (True, True, True, True)
    assert [rule_ids(r) for r in result.rules] == [
        ("xborder.exempt",),
        ("xborder.exempt",),  # B is the 99,999th
        ("xborder.exempt",),
        ("xborder.tier-contract",),  # C is the 100,000th: contract tier
    ]
    assert result.basis[-1] == "FICTITIOUS-SCC-2025-0042"
    assert [c[3] for c in result.counted] == ["B", "C"]


def test_crossborder_gate_blocks_without_a_basis_and_counts_nothing(
    bundle: PolicyBundle,
) -> None:
    sub = bundle.subscribers["oem-hq-de"]
    rules = bundle.rules.crossborder
    day = datetime(2026, 1, 15).date()
    # sensitive PI from the first person needs a contract covering sensitive PI: none here
    result = crossborder_gate(sub, rules, day, 2026, {}, ["A", "B"], [True, False])
    assert result.allowed == (False, True)
    assert "xborder.basis-missing" in rule_ids(result.rules[0])
    assert result.counted == (("oem-hq-de", 2026, ExportDataClass.PERSONAL_INFORMATION, "B"),)


def test_crossborder_gate_for_a_ciio_needs_an_assessment_from_the_first(
    bundle: PolicyBundle,
) -> None:
    sub = bundle.subscribers["oem-hq-de"]
    rules = bundle.rules.crossborder.model_copy(update={"ciio": True})
    result = crossborder_gate(sub, rules, datetime(2026, 1, 15).date(), 2026, {}, ["A"], [False])
    assert result.allowed == (False,)
    assert set(rule_ids(result.rules[0])) == {"xborder.basis-missing", "xborder.tier-assessment"}


def test_counted_vehicles_reach_the_state(bundle: PolicyBundle) -> None:
    records = [record(VIN_NONE), record(VIN)]
    d, sh = run(bundle, records)
    state = mid_trip(bundle, records, NOW).apply(d.delta, sh.held)
    count = state.count(("oem-hq-de", 2026, ExportDataClass.PERSONAL_INFORMATION))
    assert count.count == 2 and count.known == {VIN, VIN_NONE}


# --- odd batches ---------------------------------------------------------------------------


def test_an_empty_batch_decides_nothing(bundle: PolicyBundle) -> None:
    d, sh = run(bundle, [])
    assert d.verdict.shape == (4, 0)
    assert len(sh) == 0 and d.delta.trips == {}


def test_records_without_a_position_still_go(bundle: PolicyBundle) -> None:
    d, sh = run(bundle, [record(where=None, Vehicle__IsMoving=True)])
    s = index(d, "mapco-nav")
    assert d.verdict[s, 0] == Verdict.SHARE
    out = output(d, sh, "mapco-nav", 0)
    assert out is not None and out["location"] is None
    assert out["signals"] == {"Vehicle.IsMoving": True}


def test_audit_transforms_name_only_catalogued_fields(bundle: PolicyBundle) -> None:
    """An unknown field's name never reaches the audit entry, only how many were dropped;
    a catalogued field dropped for its type is named (issue 10.3)."""
    hostile = {f"OEM.Owner.{VIN}": "x", "at 31.2304,121.4737": 1, "Vehicle.Speed": "fast"}
    d, sh = run(bundle, [record(**hostile), record(t=NOW - 30, oem_private=1)])
    for s in range(len(d.plan.views)):
        first, second = d.transforms_of(s, np.array([0, 1], dtype=np.intp))
        if d.verdict[s, 0] != Verdict.BLOCK:
            assert first["unclassified"] == 2 and first["ill_typed"] == ["Vehicle.Speed"]
        if d.verdict[s, 1] != Verdict.BLOCK:
            assert second["unclassified"] == 1 and "ill_typed" not in second
        text = repr((first, second))
        assert VIN not in text and "31.2304" not in text and "oem_private" not in text
    for view in sh.views:
        assert VIN not in repr(view) and not any("31.2304" in name for name in view["signals"])


def test_per_trip_trim_holds_the_trip_end_and_is_audited(bundle: PolicyBundle) -> None:
    """The end of a trip under per-trip pseudonyms is held back like its start (issue
    17.2: where one trip ends the next begins)."""
    records = [record(VIN_NONE, t=NOW - 60 + 10 * i, where=north(110.0 * i)) for i in range(6)]
    d, sh = run(bundle, records, state=fresh(bundle, records, NOW))
    s = index(d, "mapco-nav")
    labels = [Verdict(int(v)).label for v in d.verdict[s]]
    assert labels == ["block", "block", "redact", "redact", "held", "held"]
    assert d.transforms(s, 0)["trip_trim_m"] == bundle.rules.trips.pseudonym_trim_m
    mine = [h for h in sh.held if h.subscriber == "mapco-nav"]
    assert len(mine) == 2 and all(h.transforms["pseudonym"] == "per-trip" for h in mine)


def test_privilege_needs_mainland_storage(bundle: PolicyBundle) -> None:
    moved_abroad = tweak(bundle, "mapco-nav", storage_region="DE")
    p = plan(moved_abroad, NOW)
    view = p.views[p.subscribers.index("mapco-nav")]
    assert not view.privileged and view.grid_m == 50 and view.cross_border
    expired = tweak(
        bundle,
        "mapco-nav",
        qualifications=(
            Qualification(
                kind=QualificationKind.NAVIGATION_MAP_SURVEYING,
                certificate="X",
                expires=datetime(2026, 1, 14).date(),
            ),
        ),
    )
    q = plan(expired, NOW)
    assert not q.views[q.subscribers.index("mapco-nav")].privileged
    assert plan(bundle, NOW).views[0].privileged


def test_flat_columns(bundle: PolicyBundle) -> None:
    d, _ = run(bundle, [record(), record(where=PROHIBITED)])
    cols = d.columns()
    assert cols["row"].tolist() == [0, 1] * 4
    assert cols["subscriber"].tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert cols["verdict"].tolist() == d.verdict.ravel().tolist()
    assert cols["precision_m"][0] == 0 and np.isnan(cols["precision_m"][1])  # mapco: raw; blocked
    assert cols["consent"][0] == "c-0002"


def test_stages_can_run_one_by_one(bundle: PolicyBundle) -> None:
    batch = decode_records([record()], bundle.aliases)
    p = plan(bundle, NOW)
    located = locate(batch, bundle.zones, p.grids)
    d = decide(batch, classify(batch, bundle), located, p, mid_trip(bundle, [record()], NOW))
    assert d.applied[index(d, "insureco-ubi"), 0] & Applied.GRID
    assert d.transforms(index(d, "insureco-ubi"), 0)["grid_m"] == 1000


def test_the_map_review_of_a_navigation_map_subscriber_is_in_the_audit(
    bundle: PolicyBundle,
) -> None:
    d, _ = run(bundle, [record()])
    assert d.transforms(index(d, "mapco-nav"), 0)["map_review"] == "FICTITIOUS-审图号-0000001"
    assert "map_review" not in d.transforms(index(d, "insureco-ubi"), 0)


def test_a_record_judged_on_its_last_known_position_names_the_zone_in_the_audit(
    bundle: PolicyBundle,
) -> None:
    """The audit entry of a record without a position, masked for its trip's last known
    zone, names that zone as it would for a record of its own there."""
    records = [
        record(t=NOW - 120, where=SENSITIVE_2),
        record(t=NOW - 60, where=None, Vehicle__Speed=57.0),
    ]
    d, _ = run(bundle, records)
    s = index(d, "insureco-ubi")
    assert "zone.sensitive" in d.rule_ids(s, 1)
    own = d.transforms(s, 0)["zones"]
    assert own and d.transforms(s, 1).get("zones") == own
    assert d.zone_ids(s, 1) == tuple(own)


def _per_trip_views(sh: Shaped, d: Decisions, sub_id: str) -> list[tuple[str, str]]:
    s = index(d, sub_id)
    return [
        (sh.views[i]["vehicle"], sh.message_ids[i]) for i in range(len(sh)) if sh.subscriber[i] == s
    ]


def test_a_trip_starting_when_the_last_one_ended_has_its_own_pseudonym(
    bundle: PolicyBundle,
) -> None:
    """A trip ended by a key-off and the next one, every record stamped the same second (a
    clock stuck, or one that counts whole seconds): two trips, two per-trip pseudonyms, in
    one batch or across two."""

    first = [record(VIN_NONE, t=NOW - 60, where=north(300.0 * i)) for i in range(4)]
    first[-1]["Vehicle.LowVoltageSystemState"] = "OFF"
    second = [record(VIN_NONE, t=NOW - 60 + 10 * i, where=north(300.0 * i)) for i in range(5)]
    state = fresh(bundle, first, NOW)

    def pseudonyms(d: Decisions, sh: Shaped) -> set[str]:
        return {vehicle for vehicle, _ in _per_trip_views(sh, d, "mapco-nav")}

    d, sh = run(bundle, first + second, state=state)
    one = pseudonyms(*run(bundle, first, state=state))
    assert len(one) == 1 and len(pseudonyms(d, sh)) == 2, [
        Verdict(int(v)).label for v in d.verdict[index(d, "mapco-nav")]
    ]
    d1, sh1 = run(bundle, first, state=state)
    two = pseudonyms(*run(bundle, second, state=state.apply(d1.delta, sh1.held)))
    assert one and two and not one & two


def test_a_consent_granted_mid_trip_does_not_name_the_trip_it_began_in(
    bundle: PolicyBundle,
) -> None:
    """Consent granted while a trip of a vehicle without it is under way: the rest of that
    trip keeps its per-trip pseudonym, or the stable one would continue the per-trip views
    cell for cell and name the part of the trip driven before the consent (RULES.md §3)."""
    records = [record(VIN_NONE, t=NOW - 600 + 30 * i, where=north(250.0 * i)) for i in range(12)]
    granted = NOW - 600 + 30 * 6 - 1
    consent = Consent("c-mid", VIN_NONE, "navigation-map", granted, NOW + 86400)
    state = dataclasses.replace(fresh(bundle, records, NOW), consents=ConsentBook([consent]))
    d, sh = run(bundle, records, state=state)
    vehicles = {vehicle for vehicle, _ in _per_trip_views(sh, d, "mapco-nav")}
    assert len(vehicles) == 1 and vehicles.pop().startswith("pt-")
    # the next trip, begun under the consent, carries the stable pseudonym
    later = [record(VIN_NONE, t=NOW - 60 + 10 * i, where=north(250.0 * i)) for i in range(4)]
    d2, sh2 = run(
        bundle,
        later,
        state=dataclasses.replace(fresh(bundle, later, NOW), consents=ConsentBook([consent])),
    )
    assert {v for v, _ in _per_trip_views(sh2, d2, "mapco-nav")} == {
        output(d2, sh2, "mapco-nav", 2)["vehicle"]  # type: ignore[index]
    }
    assert output(d2, sh2, "mapco-nav", 2)["vehicle"].startswith("pk-")  # type: ignore[index]


def test_a_consent_withdrawn_mid_trip_leaves_no_located_view_of_the_rest_of_it(
    bundle: PolicyBundle,
) -> None:
    """Consent withdrawn while a trip is under way: a per-trip pseudonym with positions would
    continue the stable pseudonym's track cell for cell, so the rest of the trip goes without
    a position (RULES.md §3: withdrawal covers every later decision)."""
    t0 = NOW - 3600
    records = [record(t=t0 + 30 * i, where=north(250.0 * i)) for i in range(12)]
    revoked = t0 + 30 * 6 - 1
    consent = Consent("c-nav", VIN, "navigation-map", t0 - 86400, NOW + 86400, revoked)
    state = dataclasses.replace(
        fresh(bundle, records, revoked - 1), consents=ConsentBook([consent])
    )
    d1, sh1 = run(bundle, records[:6], state=state)
    first = [output(d1, sh1, "mapco-nav", r) for r in range(6)]
    assert all(o is not None and o["vehicle"].startswith("pk-") for o in first)
    assert any(o is not None and o["location"] is not None for o in first)
    state2 = dataclasses.replace(state.apply(d1.delta, sh1.held), now=NOW)
    d2, sh2 = run(bundle, records[6:], state=state2)
    s = index(d2, "mapco-nav")
    for r in range(6):
        assert d2.verdict[s, r] != Verdict.SHARE
        assert no_location(output(d2, sh2, "mapco-nav", r)), r
    assert RuleId.PI_NO_CONSENT_DROP_LOCATION.value in d2.rule_ids(s, 0)


def test_a_held_view_is_not_released_after_its_consent_was_withdrawn(
    bundle: PolicyBundle,
) -> None:
    """A view held for the trip-end trim under a consent is released by a later batch only
    if the consent still holds then: its release is a decision after the withdrawal."""
    t0 = NOW - 3600
    records = [record(t=t0 + 60 * i, where=north(150.0 * i)) for i in range(16)]
    revoked = t0 + 60 * 8 - 1
    consent = Consent("c-ubi", VIN, "usage-based-insurance", t0 - 86400, NOW, revoked)
    state = dataclasses.replace(
        mid_trip(bundle, records, revoked - 1), consents=ConsentBook([consent])
    )
    d1, sh1 = run(bundle, records[:8], state=state)
    held = [h for h in sh1.held if h.subscriber == "insureco-ubi"]
    assert held and all("pi.trajectory-consent" in h.rules for h in held)
    state2 = dataclasses.replace(state.apply(d1.delta, sh1.held), now=NOW - 1)
    d2, _ = run(bundle, records[8:], state=state2)
    assert not [h for h in d2.delta.released if h.subscriber == "insureco-ubi"]
    assert {h.key for h in held} <= {h.key for h in d2.delta.discarded}


def test_a_held_view_is_not_released_under_a_policy_it_was_not_decided_by(
    bundle: PolicyBundle,
) -> None:
    """A view held under one policy, released after a reload to a stricter one: it must not
    go out as the old policy shaped it (here with a field the new view no longer allows)."""
    t0 = NOW - 3600
    records = [
        record(VIN_TRAFFIC, t=t0 + 60 * i, where=north(150.0 * i), Vehicle__Speed=42.0)
        for i in range(16)
    ]
    state = mid_trip(bundle, records, beijing(2026, 1, 15, 9, 0))
    d1, sh1 = run(bundle, records[:8], state=state)
    held = [h for h in sh1.held if h.subscriber == "sh-traffic"]
    assert held and any("Vehicle.Speed" in h.view["signals"] for h in held)
    stricter = dataclasses.replace(
        tweak(
            bundle, "sh-traffic", view={"categories": (FieldCategory.LOCATION, FieldCategory.TIME)}
        ),
        version="stricter",
    )
    batch = decode_records(records[8:], stricter.aliases)
    d2, _ = evaluate(batch, stricter, state.apply(d1.delta, sh1.held), keys)
    for h in d2.delta.released:
        assert h.subscriber != "sh-traffic" or "Vehicle.Speed" not in h.view["signals"]
    assert {h.key for h in held} <= {h.key for h in d2.delta.discarded}


def test_a_person_s_identifier_never_goes_beside_a_per_trip_pseudonym(
    bundle: PolicyBundle,
) -> None:
    """A driver or occupant id is the same on every trip: beside a per-trip pseudonym it
    would link them like the VIN (issue 10.1: no identifier value in two trips)."""
    ids = {
        "Vehicle__Driver__Identifier__Subject": "driver-42",
        "Vehicle__Cabin__Seat__Row1__DriverSide__Occupant__Identifier__Subject": "occ-7",
        "Vehicle__Cabin__Seat__Row1__PassengerSide__Occupant__Identifier__Subject": "occ-8",
    }
    sub = bundle.subscribers["mapco-nav"]
    personal = tweak(
        bundle, "mapco-nav", view={"categories": (*sub.view.categories, FieldCategory.PERSONAL)}
    )
    d, sh = run(personal, [record(VIN_NONE, **ids), record(VIN, t=NOW - 30, **ids)])
    out = output(d, sh, "mapco-nav", 0)
    assert out is not None and out["vehicle"].startswith("pt-")
    assert not {"driver-42", "occ-7", "occ-8"} & set(out["signals"].values())
    consented = output(d, sh, "mapco-nav", 1)  # a stable pseudonym: the ids may go
    assert consented is not None and "driver-42" in consented["signals"].values()


@pytest.mark.parametrize("ended", [True, False], ids=["key-off", "gap"])
def test_a_record_without_a_position_starting_a_trip_inherits_where_the_vehicle_parked(
    bundle: PolicyBundle, ended: bool
) -> None:
    """A vehicle parked inside a prohibited zone starts again before its GPS has a fix: the
    new trip knows no position yet, but the vehicle's last known one is in the zone, and
    that is the status the record inherits (RULES.md §3), not none at all."""
    gap = bundle.rules.trips.split_gap_s
    parked = TripState(NOW - 7200, *PROHIBITED, 500.0, NOW - 60 - 2 * gap, *PROHIBITED, ended)
    state = dataclasses.replace(fresh(bundle, [], NOW), trips={VIN: parked})
    d, sh = run(bundle, [record(where=None, Vehicle__IsMoving=False)], state=state)
    s = index(d, "mapco-nav")
    assert d.verdict[s, 0] == Verdict.BLOCK
    assert "zone.prohibited" in d.rule_ids(s, 0)
    assert d.delta.trips[VIN].start_time == NOW - 60  # it did start a new trip
    # still without a fix in the next batch: the same trip, still where it parked
    d2, _ = run(bundle, [record(t=NOW - 30, where=None)], state=state.apply(d.delta, sh.held))
    assert d2.verdict[s, 0] == Verdict.BLOCK and "zone.prohibited" in d2.rule_ids(s, 0)
    assert d2.delta.trips[VIN].start_time == NOW - 60
