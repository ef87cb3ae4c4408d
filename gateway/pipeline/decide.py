"""Decide: for every record and every subscriber, what may go, in which form, and why.

Pure functions over a batch, its classification (:mod:`gateway.pipeline.classify`), its
located positions (:mod:`gateway.pipeline.geo`), the bundle resolved for the decision time
(:func:`plan`) and a :class:`~gateway.policy.state.StateSnapshot`. No I/O. The result,
:class:`Decisions`, is a record × subscriber structure (arrays of shape ``(subscribers,
rows)``): a :class:`Verdict`, the rule ids cited (a bit set over
:class:`~gateway.policy.rules.RuleId`), the transformations applied (:class:`Applied`), the
output precision and datum, the consent and legal basis used, and the zone ids hit. It also
carries the :class:`~gateway.policy.state.StateDelta` for the store.

Each arrow of RULES.md, per (record, subscriber), in this order:

1. A rejected row (decode error) is blocked for everyone: ``input.invalid``, with its reason.
2. Privilege (§1): a subscriber with a valid (unexpired on the decision day, Beijing time)
   navigation-map surveying qualification that is in and stores in mainland China gets its
   view as configured (raw WGS-84 if it asks: ``geo.raw-requires-qualification``). Everyone
   else gets a grid of at least ``geo.grid_floor_m`` (``geo.grid-floor``, ``view.precision``)
   in GCJ-02 (``geo.datum-gcj02``); ``altitude: keep`` becomes remove, a coarsened altitude
   is never finer than ``geo.altitude_floor_m`` and ``location_derived: keep`` becomes
   coarsen.
3. Zones (§2), on the cell the row would be reported in at the subscriber's grid (the point,
   for raw): a ``prohibited`` hit blocks the record (``zone.prohibited``), a ``sensitive`` hit
   removes the position, altitude and location-derived fields (``zone.sensitive``), unless the
   subscriber is mainland and holds a valid authorisation naming that zone
   (``zone.authorised``). A row whose position cannot be placed on the grid is prohibited
   (fail closed). For a cross-border subscriber a zone hit is also important data
   (``xborder.important-data``): authorisations never apply abroad. A row without a position
   inherits its trip's last known one (in the batch or from the state) and is judged on it
   the same way; a row whose trip has no known position yet loses its location-derived
   fields (``pi.location-derived``, fail closed).
4. Geographic data abroad (§1, §4): no position of any precision goes to a cross-border
   subscriber without a valid geodata export approval (``geo.mainland-only``).
5. A position the datum transform cannot produce (outside its area) is removed, never sent
   as WGS-84 (``geo.datum-unavailable``).
6. Trajectories (§3): a position beside any vehicle identifier needs the vehicle's consent for
   one of the subscriber's purposes, active at the record's time and at the decision time
   (granted, unexpired, not revoked): ``pi.trajectory-consent``. Without it the view's
   fallback applies: the position and location-derived fields are removed
   (``pi.no-consent-drop-location``) or the identifier becomes a per-trip pseudonym
   (``pi.no-consent-trip-pseudonym``). Consent is the vehicle's standing, not the record's:
   every record of a view that may carry a position is judged, so masked records and records
   without a position get the same identifier (and lose the same fields) as located ones.
   Consent is judged per trip too: one granted after the trip began covers none of it, and
   when one held at the trip's start lapses, the rest of the trip also loses its position
   (a per-trip pseudonym would continue the stable one's track).
7. Removing the position always removes altitude and location-derived fields with it.
   Location-derived fields otherwise follow the view (``pi.location-derived``); altitude is
   removed or coarsened (``geo.altitude-removed``, ``geo.altitude-coarsened``); the time is
   truncated (``view.time-precision``); the VIN becomes a keyed pseudonym
   (``pi.vin-pseudonym``) unless the view discloses it (``pi.vin-disclosed``); fields outside
   the view are removed (``view.field-not-allowed``), unclassified ones everywhere
   (``field.unclassified``, reported per row, never blocking). Beside a per-trip pseudonym,
   fields whose value carries over between trips (``links_trips`` in the catalogue:
   odometer, energy levels) are removed: they would link the trips.
8. Trip start trimming (§3): records of a trip are blocked until the vehicle has been at
   least ``trip_trim_m`` (geodesic, WGS-84) from the trip's first position (``pi.trip-trim``).
   Records under a per-trip pseudonym are trimmed (here and in 11) by at least
   ``rules.trips.pseudonym_trim_m``: where one trip ends the next begins.
9. Down-sampling: at most one record per vehicle per ``min_interval_s`` (``view.downsample``).
10. Cross-border thresholds (§4): see :func:`crossborder_gate`; a record that would need a
    tier its recipient's valid legal bases do not cover is blocked
    (``xborder.basis-missing``); otherwise the tier is cited (``xborder.exempt``,
    ``xborder.tier-contract``, ``xborder.tier-assessment``).
11. Trip end trimming (§3): each record is held until the vehicle has been seen at least
    ``trip_trim_m`` from it; it is dropped (``pi.trip-trim``) if the trip ends first (a gap of
    ``trips.split_gap_s`` or a key-off record). Rows still undecided at the end of a batch are
    :attr:`Verdict.HELD`: the latency this costs is the time the vehicle takes to move that
    far. Held views are state (see :mod:`gateway.policy.state`).

A record's verdict is ``block`` if nothing goes, ``redact`` if something the view would
normally receive was removed or degraded by a rule that this record triggered (zone, consent,
export, datum area), else ``share``.

Order. Trips, trimming and down-sampling follow each vehicle's records in time order (ties by
row order); down-sampling picks its records before the cross-border gate, which then takes
the picked records of all vehicles in time order (ties by vehicle id, then row). These are
the only sequential parts; everything else is computed on whole columns, one subscriber at a
time. Cutting a stream into batches in time order, carrying the state, gives the same
outcome as one batch (a held view released by a later batch is sent then).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from enum import IntEnum, IntFlag
from typing import Any

import numpy as np
import numpy.typing as npt
from pyproj import Geod

from gateway.geo.zones import ZoneLevel
from gateway.model import Batch, BoolArray, Datum, ErrorCode, FloatArray
from gateway.pipeline.classify import Classified
from gateway.pipeline.geo import GeoLayer, GridSpec, Located, locate
from gateway.policy.bundle import PolicyBundle
from gateway.policy.rules import RuleId
from gateway.policy.schema import (
    AltitudeMode,
    CrossBorderRules,
    DerivedMode,
    ExportDataClass,
    FieldCategory,
    IdentifierMode,
    LegalBasisKind,
    NoConsentFallback,
    OutputDatum,
    Subscriber,
    Tier,
    beijing_date,
    counting_year,
)
from gateway.policy.state import (
    CounterKey,
    CrossBorderCount,
    HeldView,
    SentTimes,
    StateDelta,
    StateSnapshot,
    TripState,
    TripTable,
)
from gateway.policy.vehicles import VehicleIndex
from gateway.vss import ALTITUDE, LATITUDE, VIN

__all__ = [
    "Applied",
    "Decisions",
    "GateResult",
    "Plan",
    "ResolvedView",
    "Verdict",
    "crossborder_gate",
    "decide",
    "distance_m",
    "plan",
    "rule_ids",
    "sweep",
]

IntpArray = npt.NDArray[np.intp]
U64 = np.uint64

_GEOD = Geod(ellps="WGS84")
_NONE = np.array(None, dtype=object)
_NO_TRIP = (np.nan, np.nan, np.nan, 0.0, -np.inf, np.nan, np.nan, 1.0)


class Verdict(IntEnum):
    """What one (record, subscriber) pair gets. ``HELD``: decided, waiting on trip-end trim."""

    SHARE = 0
    REDACT = 1
    BLOCK = 2
    HELD = 3

    @property
    def label(self) -> str:
        """``"share"``, ``"redact"``, ``"block"`` or ``"held"``."""
        return self.name.lower()


class Applied(IntFlag):
    """Transformations applied to one pair's output (a bit set per pair)."""

    GRID = 1
    DATUM_GCJ02 = 2
    POSITION_REMOVED = 4
    ALTITUDE_REMOVED = 8
    ALTITUDE_COARSENED = 16
    DERIVED_COARSENED = 32
    DERIVED_REMOVED = 64
    KEYED_PSEUDONYM = 128
    TRIP_PSEUDONYM = 256
    VIN = 512
    TIME_TRUNCATED = 1024
    FIELDS_REMOVED = 2048
    UNCLASSIFIED_REMOVED = 4096
    ZONE_MASKED = 8192
    TRIMMED = 16384
    LINKING_REMOVED = 32768
    PER_TRIP_TRIM = 65536


_RULES = tuple(RuleId)
_BIT = {rule: U64(1 << i) for i, rule in enumerate(_RULES)}
_RULE_CACHE: dict[int, tuple[str, ...]] = {}


def rule_ids(bits: int) -> tuple[str, ...]:
    """The rule ids of a rule bit set, in catalogue (:class:`RuleId`) order."""
    key = int(bits)
    cached = _RULE_CACHE.get(key)
    if cached is None:
        cached = tuple(str(r) for i, r in enumerate(_RULES) if key >> i & 1)
        _RULE_CACHE[key] = cached
    return cached


def _set(bits: npt.NDArray[Any], where: BoolArray, value: Any) -> None:
    """``bits[where] |= value`` in place, in one pass (no temporary selection)."""
    np.bitwise_or(bits, value, out=bits, where=where)


def _bits(*rules: RuleId) -> U64:
    out = U64(0)
    for rule in rules:
        out |= _BIT[rule]
    return out


def distance_m(lat1: Any, lon1: Any, lat2: Any, lon2: Any) -> FloatArray:
    """Geodesic distance in metres on the WGS-84 ellipsoid (NaN if a position is NaN).

    Karney's algorithm (:meth:`pyproj.Geod.inv`), exact to nanometres, on broadcast arrays:
    trip trimming compares it with ``trip_trim_m``, so a record is never taken to be farther
    from a trip's start or end than it is (a local flat formula overstates north-south
    distances by about 0.4 % at 31 N).
    """
    arrays = np.broadcast_arrays(
        *(np.asarray(x, dtype=np.float64) for x in (lat1, lon1, lat2, lon2))
    )
    la1, lo1, la2, lo2 = (a.ravel() for a in arrays)
    if la1.size == 0:
        return np.zeros(arrays[0].shape)
    _, _, dist = _GEOD.inv(lo1, la1, lo2, la2)
    out: FloatArray = np.asarray(dist, dtype=np.float64).reshape(arrays[0].shape)
    return out


# --- resolving the bundle for a decision time ------------------------------------------------


@dataclass(frozen=True, slots=True)
class ResolvedView:
    """One subscriber's view as it applies on the decision day.

    ``privileged``: valid qualification and mainland (raw, WGS-84, kept altitude and grids
    below the floor are only for them). ``grid_m`` (0 = raw), ``datum``, ``altitude`` and
    ``derived`` are the effective settings; ``authorised`` the zones it may receive located
    data for (valid and mainland only); ``geo_approval`` the id of a valid geodata export
    approval (cross-border only). ``position_rules`` are cited whenever a position goes.
    ``withheld``: important fields the view allows but may not receive on that day (abroad
    without a valid security assessment covering important data, or mainland for no purpose
    the field names), removed citing ``withheld_rule``; they are not in ``allowed``.
    ``sensitive``: the allowed fields flagged sensitive (they make a record sensitive PI);
    ``important_basis``: the assessment an important field goes abroad under.
    ``per_trip_trim_m`` trims the records it receives under a per-trip pseudonym: at least
    ``rules.trips.pseudonym_trim_m``, so the end of one trip cannot link it to the next.
    """

    index: int
    subscriber: Subscriber
    privileged: bool
    grid_m: float
    datum: OutputDatum
    transform: str | None
    altitude: AltitudeMode
    altitude_step_m: float | None
    derived: DerivedMode
    allowed: frozenset[str]
    authorised: frozenset[str]
    cross_border: bool
    geo_approval: str | None
    position_rules: int
    withheld: frozenset[str] = frozenset()
    withheld_rule: int = 0
    sensitive: frozenset[str] = frozenset()
    important_basis: str | None = None
    per_trip_trim_m: float = 0.0

    @property
    def id(self) -> str:
        """The subscriber id."""
        return self.subscriber.id

    @property
    def allows_location(self) -> bool:
        """True if the view carries a position at all."""
        return LATITUDE in self.allowed

    @property
    def allows_altitude(self) -> bool:
        """True if altitude may ride along with the position."""
        return ALTITUDE in self.allowed and self.allows_location


@dataclass(frozen=True, slots=True)
class Plan:
    """The bundle resolved for one decision time: what every view may get on that day."""

    bundle: PolicyBundle
    now: float
    day: date
    year: int
    views: tuple[ResolvedView, ...]

    @property
    def grids(self) -> tuple[GridSpec, ...]:
        """The grid sizes and datum transforms the geo stage must compute."""
        wanted: dict[float, set[str]] = {}
        for v in self.views:
            names = wanted.setdefault(v.grid_m, set())
            if v.transform is not None:
                names.add(v.transform)
        return tuple(GridSpec(size, frozenset(names)) for size, names in sorted(wanted.items()))

    @property
    def subscribers(self) -> tuple[str, ...]:
        """Subscriber ids in view order."""
        return tuple(v.id for v in self.views)


def plan(bundle: PolicyBundle, now: float, subscribers: Iterable[str] | None = None) -> Plan:
    """Resolve every (or the named) subscriber's view for decision time ``now`` (Unix s).

    Expired qualifications, authorisations and legal bases count as absent (checked against
    ``now``'s Beijing date). Raises ``KeyError`` for an unknown subscriber id.
    """
    day = beijing_date(now)
    year = counting_year(bundle.rules.crossborder.year_utc_offset_hours, now)
    floor = bundle.rules.geo.grid_floor_m
    alt_floor = bundle.rules.geo.altitude_floor_m
    ids = list(bundle.subscribers) if subscribers is None else list(subscribers)
    views = []
    for index, sub_id in enumerate(ids):
        sub = bundle.subscribers[sub_id]
        view = sub.view
        privileged = sub.mainland and sub.qualified_on(day)
        asks_privilege = (
            view.raw_location
            or view.datum is OutputDatum.WGS84
            or view.location_precision_m < floor
        )
        alt_step = view.altitude_step_m
        if privileged:
            grid = view.location_precision_m
            datum = view.datum
            altitude = view.altitude
            rules = (
                _bits(RuleId.GEO_RAW_REQUIRES_QUALIFICATION)
                if grid == 0
                else _bits(RuleId.VIEW_PRECISION)
            )
        else:
            grid = max(view.location_precision_m, floor)
            datum = OutputDatum.GCJ02
            altitude = AltitudeMode.REMOVE if view.altitude is AltitudeMode.KEEP else view.altitude
            alt_step = None if alt_step is None else max(alt_step, alt_floor)
            rules = _bits(RuleId.VIEW_PRECISION, RuleId.GEO_GRID_FLOOR, RuleId.GEO_DATUM_GCJ02)
            if asks_privilege:
                rules |= _BIT[RuleId.GEO_RAW_REQUIRES_QUALIFICATION]
        derived = view.location_derived
        if derived is DerivedMode.KEEP and not (privileged and grid == 0):
            derived = DerivedMode.COARSEN
        approval = None
        if sub.cross_border:
            bases = sub.legal_bases_on(day, ExportDataClass.GEOGRAPHIC_DATA)
            approval = next(
                (b.id for b in bases if b.kind is LegalBasisKind.GEODATA_EXPORT_APPROVAL), None
            )
        data = _data_classes(bundle, sub, day)
        views.append(
            ResolvedView(
                index=index,
                subscriber=sub,
                privileged=privileged,
                grid_m=float(grid),
                datum=datum,
                transform=view.datum_transform if datum is OutputDatum.GCJ02 else None,
                altitude=altitude,
                altitude_step_m=alt_step,
                derived=derived,
                allowed=bundle.allowed_fields(sub_id) - data.withheld,
                authorised=sub.authorised_zones_on(day) if sub.mainland else frozenset(),
                cross_border=sub.cross_border,
                geo_approval=approval,
                position_rules=int(rules),
                withheld=data.withheld,
                withheld_rule=data.rule,
                sensitive=data.sensitive,
                important_basis=data.basis,
                per_trip_trim_m=max(view.trip_trim_m, bundle.rules.trips.pseudonym_trim_m),
            )
        )
    return Plan(bundle=bundle, now=float(now), day=day, year=year, views=tuple(views))


@dataclass(frozen=True, slots=True)
class _DataClasses:
    withheld: frozenset[str]
    rule: int
    sensitive: frozenset[str]
    basis: str | None


def _data_classes(bundle: PolicyBundle, sub: Subscriber, day: date) -> _DataClasses:
    """Important and sensitive fields of one view on ``day`` (RULES.md §2, §4): important
    fields go abroad only under a valid security assessment covering important data, and
    to a mainland subscriber only for a purpose the field names."""
    allowed = bundle.allowed_fields(sub.id)
    specs = {p: bundle.fields[p] for p in allowed if p in bundle.fields}
    important = frozenset(p for p, s in specs.items() if s.important)
    basis = None
    if sub.cross_border:
        basis = next(
            (
                b.id
                for b in sub.legal_bases_on(day, ExportDataClass.IMPORTANT_DATA)
                if b.kind is LegalBasisKind.SECURITY_ASSESSMENT
            ),
            None,
        )
        withheld = important if basis is None else frozenset()
        rule = _BIT[RuleId.XBORDER_IMPORTANT_DATA]
    else:
        purposes = set(sub.purposes)
        withheld = frozenset(p for p in important if not purposes & set(specs[p].purposes))
        rule = _BIT[RuleId.VIEW_IMPORTANT_DATA]
    sensitive = frozenset(p for p, s in specs.items() if s.sensitive) - withheld
    return _DataClasses(withheld, int(rule), sensitive, basis if important else None)


def _rows_with(classified: Classified, paths: frozenset[str], n: int) -> BoolArray:
    """Rows where any of ``paths`` has a value."""
    out = np.zeros(n, dtype=bool)
    for path in paths & classified.present.keys():
        out |= classified.present[path]
    return out


# --- cross-border thresholds -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GateResult:
    """Per record (in the order given): allowed or not, rule bits cited, legal basis used.

    ``counted`` lists the vehicles newly counted (``(subscriber, year, class, vehicle)``).
    """

    allowed: tuple[bool, ...]
    rules: tuple[int, ...]
    basis: tuple[str | None, ...]
    counted: tuple[tuple[str, int, ExportDataClass, str], ...]


_TIER_RULES = (RuleId.XBORDER_EXEMPT, RuleId.XBORDER_TIER_CONTRACT, RuleId.XBORDER_TIER_ASSESSMENT)
_CONTRACT_KINDS = (
    LegalBasisKind.STANDARD_CONTRACT,
    LegalBasisKind.CERTIFICATION,
    LegalBasisKind.SECURITY_ASSESSMENT,
)
_GBA_KINDS = (*_CONTRACT_KINDS, LegalBasisKind.GBA_STANDARD_CONTRACT)


_IMPORTANT_PI_OVER = 100_000
"""Automobile provisions art. 3: PI of more than this many people is important data."""


def _tier(count: int, tier: Tier, ciio: bool, important_over: float = math.inf) -> int:
    if count >= tier.assessment_from or (ciio and count >= 1) or count > important_over:
        return 2
    return 1 if count >= tier.contract_from else 0


def _covering(sub: Subscriber, day: date, data_class: ExportDataClass, tier: int) -> str | None:
    """Id of the first valid legal basis covering ``data_class`` at ``tier``; "" if exempt."""
    if tier == 0:
        return ""
    kinds: tuple[LegalBasisKind, ...] = (LegalBasisKind.SECURITY_ASSESSMENT,)
    if tier == 1:
        kinds = _GBA_KINDS if sub.hong_kong_or_macao else _CONTRACT_KINDS
    for basis in sub.legal_bases_on(day, data_class):
        if basis.kind in kinds:
            return basis.id
    return None


def crossborder_gate(
    subscriber: Subscriber,
    rules: CrossBorderRules,
    day: date,
    year: int,
    counts: Mapping[CounterKey, CrossBorderCount],
    vehicles: Sequence[str],
    sensitive: Sequence[bool],
) -> GateResult:
    """Check an export to a cross-border ``subscriber`` against the thresholds (RULES.md §4).

    One entry per record, in the order the records are exported (time order): its vehicle
    and whether it is sensitive (it carries a position — a trajectory, pseudonymised or not —
    or a field flagged sensitive in fields.yaml: health, biometrics, identity, images).
    Every record is personal information (PI) of its vehicle's people; a sensitive one is
    also sensitive PI. A vehicle not yet counted this year for a class raises that class's
    count by one. A record is allowed only if, for each of its classes, the tier of the count
    (with its vehicle) is covered by a legal basis valid on ``day``: none below
    ``contract_from``; a standard contract, certification or security assessment from
    ``contract_from``; a security assessment from ``assessment_from`` (from the first person
    for a CIIO, and beyond 100,000 people of personal information when
    ``vehicle_pi_over_100k_important`` is set: important data under the automobile
    provisions). A GBA standard contract counts as a standard contract for a recipient in
    Hong Kong or Macao only. Without a PI impact assessment completed by ``day`` nothing is
    allowed (``xborder.impact-assessment``). A record that is not allowed counts nothing.
    """
    if not subscriber.assessed_on(day):
        bits = int(_BIT[RuleId.XBORDER_IMPACT_ASSESSMENT])
        n = len(vehicles)
        return GateResult((False,) * n, (bits,) * n, (None,) * n, ())
    known = {
        c: set(counts.get((subscriber.id, year, c), CrossBorderCount()).known)
        for c in (
            ExportDataClass.PERSONAL_INFORMATION,
            ExportDataClass.SENSITIVE_PERSONAL_INFORMATION,
        )
    }
    total = {c: counts.get((subscriber.id, year, c), CrossBorderCount()).count for c in known}
    tiers = {
        ExportDataClass.PERSONAL_INFORMATION: rules.personal_information,
        ExportDataClass.SENSITIVE_PERSONAL_INFORMATION: rules.sensitive_personal_information,
    }
    important_over = {
        ExportDataClass.PERSONAL_INFORMATION: (
            _IMPORTANT_PI_OVER if rules.vehicle_pi_over_100k_important else math.inf
        ),
        ExportDataClass.SENSITIVE_PERSONAL_INFORMATION: math.inf,
    }
    allowed: list[bool] = []
    cited: list[int] = []
    used: list[str | None] = []
    counted: list[tuple[str, int, ExportDataClass, str]] = []
    for vehicle, is_sensitive in zip(vehicles, sensitive, strict=True):
        classes = [ExportDataClass.PERSONAL_INFORMATION]
        if is_sensitive:
            classes.append(ExportDataClass.SENSITIVE_PERSONAL_INFORMATION)
        ok = True
        bits = 0
        ids: list[str] = []
        for c in classes:
            fresh = vehicle not in known[c]
            tier = _tier(total[c] + (1 if fresh else 0), tiers[c], rules.ciio, important_over[c])
            basis = _covering(subscriber, day, c, tier)
            bits |= int(_BIT[_TIER_RULES[tier]])
            if basis is None:
                ok = False
            elif basis:
                ids.append(basis)
        if ok:
            for c in classes:
                if vehicle not in known[c]:
                    known[c].add(vehicle)
                    total[c] += 1
                    counted.append((subscriber.id, year, c, vehicle))
        else:
            bits |= int(_BIT[RuleId.XBORDER_BASIS_MISSING])
        allowed.append(ok)
        cited.append(bits)
        used.append(",".join(dict.fromkeys(ids)) or None if ok else None)
    return GateResult(tuple(allowed), tuple(cited), tuple(used), tuple(counted))


# --- trips -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, eq=False)
class _Trips:
    """The live rows in (vehicle, time, row) order, split into trip segments.

    ``vehicles`` are the batch's vehicle ids, sorted and unique (also as a string array,
    ``names``, a list, ``vehicle_list``, and their state numbers, ``codes``). Arrays indexed by
    sorted position: ``order`` (row index), ``veh`` (vehicle code), ``time``, ``seg`` (segment),
    ``lat``/``lon`` (position carried forward within the trip, NaN while unknown),
    ``veh_lat``/``veh_lon`` (the vehicle's last known position, across trips), ``disp``
    (distance from the trip's first position, 0 while unknown). Per segment: ``first``/``last``
    sorted positions, ``cont`` (continues the state's trip), ``ended`` (the trip ends inside the
    batch), ``start`` (trip start time), ``state_disp`` (distance already reached before the
    batch).
    """

    order: IntpArray
    vehicles: npt.NDArray[np.object_]
    names: npt.NDArray[np.str_]
    vehicle_list: list[str]
    codes: IntpArray
    veh: IntpArray
    time: FloatArray
    seg: IntpArray
    lat: FloatArray
    lon: FloatArray
    veh_lat: FloatArray
    veh_lon: FloatArray
    disp: FloatArray
    first: IntpArray
    last: IntpArray
    cont: BoolArray
    ended: BoolArray
    start: FloatArray
    state_disp: FloatArray
    new_state: Mapping[str, TripState]


def _trips(
    batch: Batch, classified: Classified, located: Located, state: StateSnapshot, gap: float
) -> _Trips:
    live_rows = np.flatnonzero(batch.ok)
    names = batch.vehicle[live_rows].astype(str)
    unique, code = np.unique(names, return_inverse=True)
    vehicles = unique.astype(object)
    vehicle_list: list[str] = vehicles.tolist()
    codes = state.vehicles.codes(vehicle_list)
    code = code.astype(np.intp)
    order_local = np.lexsort((live_rows, batch.time[live_rows], code))
    order = live_rows[order_local]
    veh = code[order_local]
    m = len(order)
    if m == 0:
        empty_f = np.empty(0)
        empty_i = np.empty(0, dtype=np.intp)
        empty_b = np.empty(0, dtype=bool)
        return _Trips(
            order=order,
            vehicles=vehicles,
            names=unique,
            vehicle_list=vehicle_list,
            codes=codes,
            veh=veh,
            time=empty_f,
            seg=empty_i,
            lat=empty_f,
            lon=empty_f,
            veh_lat=empty_f,
            veh_lon=empty_f,
            disp=empty_f,
            first=empty_i,
            last=empty_i,
            cont=empty_b,
            ended=empty_b,
            start=empty_f,
            state_disp=empty_f,
            new_state=TripTable.empty(state.vehicles),
        )
    t = batch.time[order]
    key_off = classified.key_off[order]
    has_pos = located.positioned[order]
    p_lat = np.where(has_pos, batch.lat[order], np.nan)
    p_lon = np.where(has_pos, batch.lon[order], np.nan)

    columns = state.trip_table.take(codes, _NO_TRIP)
    st_start, st_lat0, st_lon0, st_disp, s_last, st_llat, st_llon, ended_col = columns.T
    s_ended = ended_col != 0

    first_of_vehicle = np.ones(m, dtype=bool)
    first_of_vehicle[1:] = veh[1:] != veh[:-1]
    prev_t = np.empty(m)
    prev_t[0:1] = -np.inf
    prev_t[1:] = t[:-1]
    prev_t = np.where(first_of_vehicle, s_last[veh], np.maximum(prev_t, s_last[veh]))
    prev_off = np.zeros(m, dtype=bool)
    prev_off[1:] = key_off[:-1]
    prev_off = np.where(first_of_vehicle, s_ended[veh], prev_off)
    with np.errstate(invalid="ignore"):
        split = prev_off | (t - prev_t > gap)
    new_trip = split
    begins = new_trip | first_of_vehicle
    seg = np.cumsum(begins) - 1
    first = np.flatnonzero(begins)
    ns = len(first)
    last = np.empty(ns, dtype=np.intp)
    last[:-1] = first[1:] - 1
    last[-1] = m - 1
    seg_veh = veh[first]
    cont = ~new_trip[first]
    vehicle_last_seg = np.ones(ns, dtype=bool)
    vehicle_last_seg[:-1] = seg_veh[1:] != seg_veh[:-1]
    ended = ~vehicle_last_seg | key_off[last]

    start = _distinct_starts(np.where(cont, st_start[seg_veh], t[first]), cont, seg_veh, st_start)
    # Carry the last known position forward inside each segment (seeded by the state's).
    pos_idx = np.where(has_pos, np.arange(m), -1)
    last_pos = np.maximum.accumulate(pos_idx)
    inside = last_pos >= first[seg]
    seed_lat = np.where(cont, st_llat[seg_veh], np.nan)
    seed_lon = np.where(cont, st_llon[seg_veh], np.nan)
    lat = np.where(inside, p_lat[np.maximum(last_pos, 0)], seed_lat[seg])
    lon = np.where(inside, p_lon[np.maximum(last_pos, 0)], seed_lon[seg])
    # The vehicle's last known position, across trip boundaries (where it parked).
    vehicle_first = np.maximum.accumulate(np.where(first_of_vehicle, np.arange(m), 0))
    own = last_pos >= vehicle_first
    veh_lat = np.where(own, p_lat[np.maximum(last_pos, 0)], st_llat[veh])
    veh_lon = np.where(own, p_lon[np.maximum(last_pos, 0)], st_llon[veh])
    # The trip's first position: the state's, else the segment's first positioned row.
    big = np.iinfo(np.intp).max
    first_pos = np.minimum.reduceat(np.where(has_pos, np.arange(m), big), first)
    found = first_pos != big
    safe = np.where(found, first_pos, 0)
    own_lat = np.where(found, p_lat[safe], np.nan)
    own_lon = np.where(found, p_lon[safe], np.nan)
    use_state = cont & ~np.isnan(st_lat0[seg_veh])
    lat0 = np.where(use_state, st_lat0[seg_veh], own_lat)
    lon0 = np.where(use_state, st_lon0[seg_veh], own_lon)
    state_disp = np.where(cont, st_disp[seg_veh], 0.0)
    disp = np.nan_to_num(distance_m(lat0[seg], lon0[seg], lat, lon), nan=0.0)
    # Before the trip's first position, a carried one is where the vehicle parked: no
    # distance travelled on this trip.
    disp = np.where(inside | use_state[seg], disp, 0.0)

    seg_max = np.maximum.reduceat(disp, first)
    ks = np.flatnonzero(vehicle_last_seg)
    ends = last[ks]
    last_time = np.where(cont[ks], np.maximum(t[ends], s_last[seg_veh[ks]]), t[ends])
    new_state = TripTable.of_codes(
        state.vehicles,
        codes[seg_veh[ks]],
        np.column_stack(
            (
                start[ks],
                lat0[ks],
                lon0[ks],
                np.maximum(seg_max[ks], state_disp[ks]),
                last_time,
                np.where(np.isnan(lat[ends]), veh_lat[ends], lat[ends]),
                np.where(np.isnan(lon[ends]), veh_lon[ends], lon[ends]),
                key_off[ends],
            )
        ),
    )
    return _Trips(
        order=order,
        vehicles=vehicles,
        names=unique,
        vehicle_list=vehicle_list,
        codes=codes,
        veh=veh,
        time=t,
        seg=seg,
        lat=lat,
        lon=lon,
        veh_lat=veh_lat,
        veh_lon=veh_lon,
        disp=disp,
        first=first,
        last=last,
        cont=cont,
        ended=ended,
        start=start,
        state_disp=state_disp,
        new_state=new_state,
    )


def _distinct_starts(
    start: FloatArray, cont: BoolArray, seg_veh: IntpArray, st_start: FloatArray
) -> FloatArray:
    """Trip starts made strictly increasing per vehicle, in whole milliseconds where they
    would repeat: a trip's start names its per-trip pseudonym, so a trip beginning in the
    millisecond the last one began (a key-off and the next record stamped alike) starts a
    millisecond after it instead, and never shares its pseudonym."""
    prev = np.full(len(start), -np.inf)
    prev[1:] = start[:-1]
    first_of_vehicle = np.ones(len(start), dtype=bool)
    first_of_vehicle[1:] = seg_veh[1:] != seg_veh[:-1]
    prev = np.where(first_of_vehicle, st_start[seg_veh], prev)
    with np.errstate(invalid="ignore"):
        clash = ~cont & (np.round(start * 1000) <= np.round(prev * 1000))
    if not clash.any():
        return start
    out = start.copy()
    for k in range(int(np.flatnonzero(clash)[0]), len(out)):
        before = st_start[seg_veh[k]] if first_of_vehicle[k] else out[k - 1]
        if not cont[k] and np.isfinite(before) and round(out[k] * 1000) <= round(before * 1000):
            out[k] = (round(before * 1000) + 1) / 1000
    return out


def _left_start(trips: _Trips, trim: float) -> BoolArray:
    """Per sorted position: the trip has been ``trim`` metres from its start by this row."""
    far = (trips.disp >= trim).astype(np.int64)
    if len(far) == 0:
        return far.astype(bool)
    cs = np.cumsum(far)
    before = cs[trips.first] - far[trips.first]
    left: BoolArray = (cs - before[trips.seg] > 0) | (trips.state_disp[trips.seg] >= trim)
    return left


def _trimmed(raised: BoolArray) -> npt.NDArray[np.uint32]:
    """The applied bits of rows trimmed away: ``TRIMMED``, and ``PER_TRIP_TRIM`` where the
    per-trip-pseudonym trim applied."""
    out: npt.NDArray[np.uint32] = np.where(
        raised, Applied.TRIMMED | Applied.PER_TRIP_TRIM, Applied.TRIMMED
    ).astype(np.uint32)
    return out


def _released(trips: _Trips, cand: IntpArray, trim: FloatArray) -> BoolArray:
    """For candidate sorted positions: has a later row of the same trip been ``trim`` (one
    per candidate) away?"""
    out = np.zeros(len(cand), dtype=bool)
    if len(cand) == 0:
        return out
    end = trips.last[trips.seg[cand]]
    todo = np.flatnonzero(end > cand)
    offset, width = 1, 16
    while todo.size:
        k = cand[todo]
        steps = np.arange(offset, offset + width)
        j = k[:, None] + steps[None, :]
        valid = j <= end[todo][:, None]
        jj = np.where(valid, j, k[:, None])
        d = distance_m(trips.lat[k][:, None], trips.lon[k][:, None], trips.lat[jj], trips.lon[jj])
        with np.errstate(invalid="ignore"):
            hit = (valid & (d >= trim[todo][:, None])).any(axis=1)
        out[todo[hit]] = True
        more = ~hit & (k + offset + width <= end[todo])
        todo = todo[more]
        offset += width
        width *= 2
    return out


# --- the decision ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, eq=False)
class Decisions:
    """Decisions for every (subscriber, row) of a batch: arrays of shape ``(S, n)``.

    ``verdict`` (:class:`Verdict`), ``rules`` (uint64 bit set over :class:`RuleId`, see
    :func:`rule_ids`), ``applied`` (:class:`Applied` bits), ``consent`` / ``basis`` (ids or
    ``None``), ``position`` (the output carries a position), ``redacted`` (what a held pair
    becomes when released: redact if true, else share). Per row: ``trip_start`` (the trip a
    row belongs to, NaN for rejected rows) and ``trip_lat``/``trip_lon`` (its position,
    carried forward within the trip, for the trip-end release test). ``delta`` is the state
    change to persist with the batch.
    """

    plan: Plan
    batch: Batch
    classified: Classified
    located: Located
    verdict: npt.NDArray[np.uint8]
    rules: npt.NDArray[np.uint64]
    applied: npt.NDArray[np.uint32]
    consent: npt.NDArray[np.object_]
    basis: npt.NDArray[np.object_]
    position: BoolArray
    redacted: BoolArray
    trip_start: FloatArray
    trip_lat: FloatArray
    trip_lon: FloatArray
    delta: StateDelta = field(default_factory=StateDelta)
    inherited: Located | None = None
    _transform_cache: dict[tuple[Any, ...], dict[str, Any]] = field(
        default_factory=dict, repr=False
    )

    @property
    def shape(self) -> tuple[int, int]:
        """``(subscribers, rows)``."""
        return (len(self.plan.views), len(self.batch))

    def columns(self) -> dict[str, npt.NDArray[Any]]:
        """The pairs as flat columns, subscriber-major: ``row``, ``subscriber`` (index into
        ``plan.views``), ``verdict``, ``rules`` (bit sets), ``applied``, ``precision_m``
        (NaN where no position goes), ``consent``, ``basis``."""
        S, n = self.shape
        precision = np.array([v.grid_m for v in self.plan.views], dtype=np.float64)
        return {
            "row": np.tile(np.arange(n, dtype=np.intp), S),
            "subscriber": np.repeat(np.arange(S, dtype=np.intp), n),
            "verdict": self.verdict.ravel(),
            "rules": self.rules.ravel(),
            "applied": self.applied.ravel(),
            "precision_m": np.where(self.position, precision[:, None], np.nan).ravel(),
            "consent": self.consent.ravel(),
            "basis": self.basis.ravel(),
        }

    def layer(self, s: int) -> GeoLayer:
        """The geo layer subscriber ``s`` is decided on."""
        return self.located.layer(self.plan.views[s].grid_m)

    def rule_ids(self, s: int, row: int) -> tuple[str, ...]:
        """Rule ids cited for (subscriber ``s``, ``row``), in catalogue order."""
        return rule_ids(int(self.rules[s, row]))

    def zone_ids(self, s: int, row: int) -> tuple[str, ...]:
        """Ids of the zones the row's reported cell touches at subscriber ``s``'s grid (for a
        row without a position, the cell of its trip's last known one, which it was judged
        on)."""
        own = self.layer(s).zone_ids(row)
        if own or self.inherited is None:
            return own
        return self.inherited.layer(self.plan.views[s].grid_m).zone_ids(row)

    def reason(self, row: int) -> str | None:
        """Why a rejected row was rejected (e.g. ``"missing-timestamp"``), else ``None``."""
        code = int(self.batch.error[row])
        return ErrorCode(code).reason if code else None

    def precision_m(self, s: int, row: int) -> float | None:
        """Output precision in metres (0 = raw) if a position goes, else ``None``."""
        if not self.position[s, row]:
            return None
        return self.plan.views[s].grid_m

    def datum(self, s: int, row: int) -> Datum:
        """Datum of the output position, ``Datum.NONE`` if none goes."""
        if not self.position[s, row]:
            return Datum.NONE
        return self.plan.views[s].datum.datum

    def crossborder_blocked(self) -> dict[str, int]:
        """Per cross-border subscriber: records blocked because a threshold lacks a covering
        legal basis or the recipient lacks a PI impact assessment (the alert metric)."""
        alert = _bits(RuleId.XBORDER_BASIS_MISSING, RuleId.XBORDER_IMPACT_ASSESSMENT)
        out: dict[str, int] = {}
        for view in self.plan.views:
            if not view.cross_border:
                continue
            hit = (self.verdict[view.index] == Verdict.BLOCK) & (
                (self.rules[view.index] & alert) != 0
            )
            if n := int(hit.sum()):
                out[view.id] = n
        return out

    def basis_of(self, s: int, row: int) -> str | None:
        """Consent id and legal basis ids used, comma-separated, or ``None``."""
        parts = [p for p in (self.consent[s, row], self.basis[s, row]) if p]
        return ",".join(parts) if parts else None

    def transforms(self, s: int, row: int) -> dict[str, Any]:
        """The transformations of one pair as JSON for the audit entry (no floats)."""
        return self.transforms_of(s, np.array([row], dtype=np.intp))[0]

    def transforms_of(self, s: int, rows: IntpArray) -> list[dict[str, Any]]:
        """:meth:`transforms` of many rows of subscriber ``s`` (each a fresh dict)."""
        layer = self.layer(s)
        site = layer.site[rows]
        zoned = np.zeros(len(rows), dtype=bool)
        has_site = site >= 0
        zoned[has_site] = layer.mask.level[site[has_site]] != 0
        # Rows without a position were judged on their trip's last known one: its zones.
        carried = (
            None if self.inherited is None else self.inherited.layer(self.plan.views[s].grid_m)
        )
        if carried is not None:
            c_site = carried.site[rows]
            c_has = ~has_site & (c_site >= 0)
            zoned[c_has] = carried.mask.level[c_site[c_has]] != 0
        bits_list = self.applied[s, rows].tolist()
        pos_list = self.position[s, rows].tolist()
        dropped = self.classified.dropped[rows].tolist()
        view = self.plan.views[s]
        cache = self._transform_cache
        names_of: dict[int, tuple[int, tuple[str, ...]]] = {0: (0, ())}
        out: list[dict[str, Any]] = []
        for row, bits, pos, in_zone, kind in zip(
            rows.tolist(), bits_list, pos_list, zoned.tolist(), dropped, strict=True
        ):
            zones = (
                (layer if carried is None or layer.site[row] >= 0 else carried).zone_ids(row)
                if in_zone
                else ()
            )
            names: tuple[int, tuple[str, ...]] = (0, ())
            if bits & _UNCLASSIFIED_BIT:
                known = names_of.get(kind) if kind > 0 else None
                if known is None:
                    known = self._dropped(row)
                    if kind > 0:
                        names_of[kind] = known
                names = known
            key = (s, bits, pos, zones, names)
            cached = cache.get(key)
            if cached is None:
                cached = cache[key] = _transforms(view, bits, pos, zones, names)
            out.append(dict(cached))
        return out

    def _dropped(self, row: int) -> tuple[int, tuple[str, ...]]:
        """How many fields outside the catalogue ``row`` carried, and the catalogued fields
        dropped for their type. Names outside the catalogue are input (they may hold a VIN
        or a position): they are counted, never named."""
        names = self.classified.unclassified_names(row)
        fields = self.plan.bundle.fields
        catalogued = tuple(name for name in names if name in fields)
        return len(names) - len(catalogued), catalogued

    def rules_of(self, s: int, rows: IntpArray) -> list[tuple[str, ...]]:
        """:meth:`rule_ids` of many rows of subscriber ``s``."""
        return [rule_ids(b) for b in self.rules[s, rows].tolist()]

    def bases_of(self, s: int, rows: IntpArray) -> list[str | None]:
        """:meth:`basis_of` of many rows of subscriber ``s``."""
        return [
            ",".join(p for p in (c, b) if p) or None
            for c, b in zip(
                self.consent[s, rows].tolist(), self.basis[s, rows].tolist(), strict=True
            )
        ]

    def precisions_of(self, s: int, rows: IntpArray) -> list[float | None]:
        """:meth:`precision_m` of many rows of subscriber ``s``."""
        grid = self.plan.views[s].grid_m
        return [grid if p else None for p in self.position[s, rows].tolist()]


_UNCLASSIFIED_BIT = int(Applied.UNCLASSIFIED_REMOVED)


def _transforms(
    view: ResolvedView,
    bits: int,
    position: bool,
    zones: tuple[str, ...],
    dropped: tuple[int, tuple[str, ...]],
) -> dict[str, Any]:
    cfg = view.subscriber.view
    out: dict[str, Any] = {}
    if position:
        out["datum"] = view.datum.value
        out["grid_m"] = _json_number(view.grid_m)
    if bits & Applied.POSITION_REMOVED:
        out["position"] = "removed"
    if zones:
        out["zones"] = list(zones)
    if bits & Applied.TRIP_PSEUDONYM:
        out["pseudonym"] = "per-trip"
    elif bits & Applied.KEYED_PSEUDONYM:
        out["pseudonym"] = "per-subscriber"
    elif bits & Applied.VIN:
        out["pseudonym"] = "none"
    if bits & Applied.ALTITUDE_COARSENED and view.altitude_step_m is not None:
        out["altitude"] = f"coarsened:{_json_number(view.altitude_step_m)}"
    elif bits & Applied.ALTITUDE_REMOVED:
        out["altitude"] = "removed"
    if bits & Applied.DERIVED_REMOVED:
        out["location_derived"] = "removed"
    elif bits & Applied.DERIVED_COARSENED:
        out["location_derived"] = "coarsened"
    if bits & Applied.TIME_TRUNCATED:
        out["time_s"] = _json_number(cfg.time_precision_s)
    unknown, ill_typed = dropped
    if unknown:
        out["unclassified"] = unknown
    if ill_typed:
        out["ill_typed"] = list(ill_typed)
    if bits & Applied.TRIMMED:
        trim = view.per_trip_trim_m if bits & Applied.PER_TRIP_TRIM else cfg.trip_trim_m
        out["trip_trim_m"] = _json_number(trim)
    review = view.subscriber.map_review
    if position and review is not None:
        out["map_review"] = review.reference
    if bits & Applied.LINKING_REMOVED:
        out["links_trips"] = "removed"
    return out


def _json_number(value: float) -> int | str:
    return int(value) if float(value).is_integer() else repr(float(value))


def decide(
    batch: Batch,
    classified: Classified,
    located: Located,
    the_plan: Plan,
    state: StateSnapshot,
) -> Decisions:
    """Decide every (record, subscriber) pair of ``batch`` (see the module docstring).

    Pure: reads only its arguments. Guarantees: a rejected row is blocked for everyone; no
    pair of a non-privileged subscriber carries a position finer than the grid floor or in
    a datum other than GCJ-02; every cited rule id is a :class:`RuleId` (so in the bundle's
    catalogue); the result does not depend on how a stream of records is cut into batches,
    given the state each batch leaves.
    """
    bundle = the_plan.bundle
    n = len(batch)
    views = the_plan.views
    S = len(views)
    verdict = np.zeros((S, n), dtype=np.uint8)
    rules = np.zeros((S, n), dtype=np.uint64)
    applied = np.zeros((S, n), dtype=np.uint32)
    consent_col = np.full((S, n), None, dtype=object)
    basis_col = np.full((S, n), None, dtype=object)
    position = np.zeros((S, n), dtype=bool)
    redacted = np.zeros((S, n), dtype=bool)

    live = batch.ok
    trips = _trips(batch, classified, located, state, bundle.rules.trips.split_gap_s)
    trip_start = np.full(n, np.nan)
    trip_lat = np.full(n, np.nan)
    trip_lon = np.full(n, np.nan)
    if len(trips.order):
        trip_start[trips.order] = trips.start[trips.seg]
        trip_lat[trips.order] = trips.lat
        trip_lon[trips.order] = trips.lon
    unclassified_any = classified.any_unclassified & live
    consents = _ConsentIndex(batch, trips, state)
    held_veh = _held_vehicles(trips, state)
    inherited = _inherit(batch, located, trips, the_plan)

    last_sent: dict[str, SentTimes] = {}
    counted: list[tuple[str, int, ExportDataClass, str]] = []
    released: list[int] = []
    discarded: list[int] = []

    for view in views:
        s = view.index
        sub = view.subscriber
        cfg = sub.view
        r = np.zeros(n, dtype=np.uint64)
        a = np.zeros(n, dtype=np.uint32)
        degraded = np.zeros(n, dtype=bool)

        # --- fields -------------------------------------------------------------------
        _set(r, unclassified_any, _BIT[RuleId.FIELD_UNCLASSIFIED])
        _set(a, unclassified_any, np.uint32(Applied.UNCLASSIFIED_REMOVED))
        not_allowed = np.zeros(n, dtype=bool)
        for path, present in classified.present.items():
            if path not in view.allowed and path not in view.withheld:
                not_allowed |= present
        has_pos = located.positioned
        has_alt = np.isfinite(batch.alt) & live
        if not view.allows_location:
            not_allowed |= has_pos
        if ALTITUDE not in view.allowed:
            not_allowed |= has_alt
        not_allowed &= live
        _set(r, not_allowed, _BIT[RuleId.VIEW_FIELD_NOT_ALLOWED])
        _set(a, not_allowed, np.uint32(Applied.FIELDS_REMOVED))
        important_out = _rows_with(classified, view.withheld, n) & live
        _set(r, important_out, U64(view.withheld_rule))
        _set(a, important_out, np.uint32(Applied.FIELDS_REMOVED))
        degraded |= important_out

        # --- zones --------------------------------------------------------------------
        layer = located.layer(view.grid_m)
        full_level = layer.level
        level = layer.levels_excluding(view.authorised) if view.authorised else full_level
        live_pos = live & has_pos
        zone_hit = live_pos & (full_level != ZoneLevel.NONE)
        if view.authorised:
            auth_hit = layer.hits_any(view.authorised)
            _set(r, auth_hit & live_pos, _BIT[RuleId.ZONE_AUTHORISED])
        prohibited = live_pos & (level == ZoneLevel.PROHIBITED)
        sensitive = live_pos & (level == ZoneLevel.SENSITIVE)
        unplaced = np.zeros(n, dtype=bool)
        if inherited is not None:  # rows without a position: their trip's last known one
            zone_hit, prohibited, sensitive, unplaced = _inherited_zones(
                inherited, view, live & ~has_pos, r, (zone_hit, prohibited, sensitive)
            )
        if view.cross_border:
            _set(r, zone_hit, _BIT[RuleId.XBORDER_IMPORTANT_DATA])
        _set(r, prohibited, _BIT[RuleId.ZONE_PROHIBITED])
        _set(r, sensitive, _BIT[RuleId.ZONE_SENSITIVE])
        _set(a, sensitive | prohibited, np.uint32(Applied.ZONE_MASKED))
        blocked = ~live | prohibited

        # --- position -----------------------------------------------------------------
        wants_pos = live_pos & view.allows_location & ~prohibited
        out_pos = wants_pos.copy()
        if view.cross_border and view.geo_approval is None:
            _set(r, out_pos, _BIT[RuleId.GEO_MAINLAND_ONLY])
            out_pos[:] = False
        out_pos &= ~sensitive
        if view.transform is not None:
            unavailable = out_pos & ~layer.outputs[view.transform].ok
            _set(r, unavailable, _BIT[RuleId.GEO_DATUM_UNAVAILABLE])
            out_pos &= ~unavailable
        trip_pseudonym = np.zeros(n, dtype=bool)
        derived_in = _derived_in(classified, view, live)
        # Consent is the vehicle's standing, whatever this record carries: every record of a
        # located view is judged, so a masked or unplaced record cannot carry an identifier
        # the vehicle's trajectories may not (RULES.md §3).
        judged = live & ~prohibited if view.allows_location else out_pos
        consent_ids = consents.lookup(sub.purposes, judged)
        has_consent = judged & np.not_equal(consent_ids, _NONE)
        with_position = has_consent & out_pos
        _set(r, with_position, _BIT[RuleId.PI_TRAJECTORY_CONSENT])
        consent_col[s, with_position] = consent_ids[with_position]
        no_consent = judged & ~has_consent
        consent_dropped = np.zeros(n, dtype=bool)
        if cfg.no_consent is NoConsentFallback.DROP_LOCATION:
            consent_dropped = no_consent & (out_pos | derived_in)
            _set(r, consent_dropped, _BIT[RuleId.PI_NO_CONSENT_DROP_LOCATION])
            out_pos &= ~no_consent
        else:
            _set(r, no_consent, _BIT[RuleId.PI_NO_CONSENT_TRIP_PSEUDONYM])
            trip_pseudonym |= no_consent
            # A consent lapsed mid-trip: positions under the per-trip pseudonym would
            # continue the stable one's track, so the rest of the trip goes without them.
            lapsed = no_consent & consents.began_under(sub.purposes, no_consent)
            consent_dropped = lapsed & (out_pos | derived_in)
            _set(r, consent_dropped, _BIT[RuleId.PI_NO_CONSENT_DROP_LOCATION])
            out_pos &= ~lapsed
            if cfg.identifier is not IdentifierMode.TRIP_PSEUDONYM:
                degraded |= no_consent
        removed = wants_pos & ~out_pos
        degraded |= removed
        _set(a, removed, np.uint32(Applied.POSITION_REMOVED))
        _set(r, out_pos, U64(view.position_rules))
        if view.grid_m > 0:
            _set(a, out_pos, np.uint32(Applied.GRID))
        if view.datum is OutputDatum.GCJ02:
            _set(a, out_pos, np.uint32(Applied.DATUM_GCJ02))
        if view.cross_border and view.geo_approval is not None:
            basis_col[s, out_pos] = view.geo_approval
        if view.important_basis is not None:
            important = frozenset(
                p for p in view.allowed if p in bundle.fields and bundle.fields[p].important
            )
            for row in np.flatnonzero(_rows_with(classified, important, n) & live).tolist():
                prior = basis_col[s, row]
                basis_col[s, row] = (
                    f"{prior},{view.important_basis}" if prior else view.important_basis
                )

        # --- altitude -----------------------------------------------------------------
        if view.allows_altitude:
            alt_in = has_alt & wants_pos
            keep_alt = alt_in & out_pos
            if view.altitude is AltitudeMode.COARSEN:
                _set(r, keep_alt, _BIT[RuleId.GEO_ALTITUDE_COARSENED])
                _set(a, keep_alt, np.uint32(Applied.ALTITUDE_COARSENED))
            elif view.altitude is AltitudeMode.REMOVE:
                _set(r, keep_alt, _BIT[RuleId.GEO_ALTITUDE_REMOVED])
                _set(a, keep_alt, np.uint32(Applied.ALTITUDE_REMOVED))
            lost = alt_in & ~out_pos
            _set(a, lost, np.uint32(Applied.ALTITUDE_REMOVED))
        elif ALTITUDE in view.allowed:
            dropped = has_alt & live
            _set(r, dropped, _BIT[RuleId.GEO_ALTITUDE_REMOVED])
            _set(a, dropped, np.uint32(Applied.ALTITUDE_REMOVED))

        # --- location-derived ---------------------------------------------------------
        derived_lost = derived_in & (removed | sensitive | unplaced | consent_dropped)
        _set(a, derived_lost, np.uint32(Applied.DERIVED_REMOVED))
        degraded |= derived_lost
        if view.derived is DerivedMode.KEEP:
            _set(r, derived_lost, _BIT[RuleId.PI_LOCATION_DERIVED])
        else:
            _set(r, derived_in, _BIT[RuleId.PI_LOCATION_DERIVED])
            rest = derived_in & ~derived_lost
            _set(
                a,
                rest,
                np.uint32(
                    Applied.DERIVED_COARSENED
                    if view.derived is DerivedMode.COARSEN
                    else Applied.DERIVED_REMOVED
                ),
            )

        # --- identifier and time --------------------------------------------------------
        mode = cfg.identifier
        if mode is IdentifierMode.VIN and VIN in view.allowed:
            ident = np.where(trip_pseudonym, Applied.TRIP_PSEUDONYM, Applied.VIN)
            _set(r, live & ~trip_pseudonym, _BIT[RuleId.PI_VIN_DISCLOSED])
            _set(r, live & trip_pseudonym, _BIT[RuleId.PI_VIN_PSEUDONYM])
        else:
            base = (
                Applied.TRIP_PSEUDONYM
                if mode is IdentifierMode.TRIP_PSEUDONYM
                else Applied.KEYED_PSEUDONYM
            )
            ident = np.where(trip_pseudonym, Applied.TRIP_PSEUDONYM, base)
            _set(r, live, _BIT[RuleId.PI_VIN_PSEUDONYM])
        _set(a, live, ident.astype(np.uint32))
        per_trip = live & (ident == Applied.TRIP_PSEUDONYM)
        _set(a, per_trip & _links_trips_in(classified, view), np.uint32(Applied.LINKING_REMOVED))
        step = cfg.time_precision_s
        with np.errstate(invalid="ignore"):
            truncated = live & (np.floor(batch.time / step) * step != batch.time)
        _set(r, truncated, _BIT[RuleId.VIEW_TIME_PRECISION])
        _set(a, truncated, np.uint32(Applied.TIME_TRUNCATED))

        # --- verdict before the sequential rules --------------------------------------
        v = np.where(degraded, Verdict.REDACT, Verdict.SHARE).astype(np.uint8)
        v[blocked] = Verdict.BLOCK
        block_rules = np.zeros(n, dtype=np.uint64)
        block_rules[~live] = _BIT[RuleId.INPUT_INVALID]
        keep_on_block = _bits(
            RuleId.ZONE_PROHIBITED, RuleId.XBORDER_IMPORTANT_DATA, RuleId.ZONE_AUTHORISED
        )
        block_rules[prohibited] = r[prohibited] & keep_on_block

        # --- sequential rules, in (vehicle, time, row) order ----------------------------
        order = trips.order
        sorted_ok = ~blocked[order]
        trim = cfg.trip_trim_m
        raised = per_trip[order] & (view.per_trip_trim_m > trim)
        thr = np.where(raised, view.per_trip_trim_m, trim)
        trimming = bool(len(order)) and bool(thr.max(initial=0.0) > 0)
        if trimming:
            left = _left_start(trips, trim)
            if raised.any():
                left = np.where(raised, _left_start(trips, view.per_trip_trim_m), left)
            cut = sorted_ok & ~left
            rows_cut = order[cut]
            v[rows_cut] = Verdict.BLOCK
            block_rules[rows_cut] = _BIT[RuleId.PI_TRIP_TRIM]
            a[rows_cut] = _trimmed(raised[cut])
            sorted_ok &= left
        seeds = _last_sent_seeds(trips, state, sub.id) if len(order) else np.empty(0)
        if len(order):
            sent = _downsample(trips, sorted_ok, cfg.min_interval_s, seeds)
            dropped_rows = order[sorted_ok & ~sent]
            v[dropped_rows] = Verdict.BLOCK
            block_rules[dropped_rows] = _BIT[RuleId.VIEW_DOWNSAMPLE]
            a[dropped_rows] = 0
            sorted_ok &= sent
        if view.cross_border and len(order):
            spi = out_pos | (_rows_with(classified, view.sensitive, n) & live)
            gated, gate = _gate(trips, sorted_ok, spi, view, the_plan, state, counted)
            rows_gated = order[gated]
            r[rows_gated] |= np.asarray(gate.rules, dtype=np.uint64)
            allowed = np.asarray(gate.allowed, dtype=bool)
            denied = rows_gated[~allowed]
            v[denied] = Verdict.BLOCK
            block_rules[denied] = r[denied] & _bits(
                RuleId.XBORDER_BASIS_MISSING, RuleId.XBORDER_IMPACT_ASSESSMENT, *_TIER_RULES
            )
            a[denied] = 0
            for row, basis in zip(rows_gated.tolist(), gate.basis, strict=True):
                if basis:
                    prior = basis_col[s, row]
                    basis_col[s, row] = f"{prior},{basis}" if prior else basis
            sorted_ok[gated[~allowed]] = False
        if len(order):
            _record_last_sent(trips, sorted_ok, seeds, sub.id, state.vehicles, last_sent)
        if trimming:
            cand = np.flatnonzero(sorted_ok & (thr > 0))
            go = _released(trips, cand, thr[cand])
            waiting = cand[~go]
            ended = trips.ended[trips.seg[waiting]]
            dropped_rows = order[waiting[ended]]
            v[dropped_rows] = Verdict.BLOCK
            block_rules[dropped_rows] = _BIT[RuleId.PI_TRIP_TRIM]
            a[dropped_rows] = _trimmed(raised[waiting[ended]])
            held_rows = order[waiting[~ended]]
            v[held_rows] = Verdict.HELD
            r[held_rows] |= _BIT[RuleId.PI_TRIP_TRIM]
        rel, dis = _settle_held(
            trips, state, held_veh, sub.id, (trim, view.per_trip_trim_m), bundle.version
        )
        released.extend(rel.tolist())
        discarded.extend(dis.tolist())
        final_block = v == Verdict.BLOCK
        r[final_block] = block_rules[final_block]
        a[final_block] &= np.uint32(Applied.TRIMMED | Applied.ZONE_MASKED | Applied.PER_TRIP_TRIM)
        consent_col[s, final_block] = None
        basis_col[s, final_block] = None
        position[s] = out_pos & ~final_block
        redacted[s] = degraded & ~final_block
        verdict[s] = v
        rules[s] = r
        applied[s] = a

    delta = StateDelta(
        trips=trips.new_state,
        last_sent=last_sent,
        counted=tuple(counted),
        released=tuple(state.held.views[i] for i in released),
        discarded=tuple(state.held.views[i] for i in discarded),
        settled=tuple(released + discarded),
    )
    return Decisions(
        plan=the_plan,
        batch=batch,
        classified=classified,
        located=located,
        verdict=verdict,
        rules=rules,
        applied=applied,
        consent=consent_col,
        basis=basis_col,
        position=position,
        redacted=redacted,
        trip_start=trip_start,
        trip_lat=trip_lat,
        trip_lon=trip_lon,
        delta=delta,
        inherited=inherited,
    )


def _derived_in(classified: Classified, view: ResolvedView, live: BoolArray) -> BoolArray:
    """Rows carrying a location-derived field the view allows."""
    out = np.zeros(len(live), dtype=bool)
    for path, present in classified.category_present(FieldCategory.LOCATION_DERIVED).items():
        if path in view.allowed:
            out |= present
    out &= live
    return out


def _links_trips_in(classified: Classified, view: ResolvedView) -> BoolArray:
    """Rows carrying a field the view allows whose value carries over between trips
    (``links_trips`` in the catalogue): never beside a per-trip pseudonym (RULES.md §3)."""
    out = np.zeros(len(classified.key_off), dtype=bool)
    for path, present in classified.present.items():
        if classified.specs[path].links_trips and path in view.allowed:
            out |= present
    return out


def _inherit(batch: Batch, located: Located, trips: _Trips, the_plan: Plan) -> Located | None:
    """The located last known positions of the rows without a position of their own.

    A record without a position inherits its vehicle's last known location status (RULES.md
    §3): its trip's last position, in this batch or from the state (``trips.lat``/``lon``),
    or, before its trip has one, where the vehicle was last seen (``trips.veh_lat``/``lon``:
    a vehicle parked in a zone is still there when it starts again without a fix).
    Located on every grid the views use, exactly like a position of its own. ``None`` if
    every live row has a position.
    """
    bare = batch.ok & ~located.positioned
    if not bare.any():
        return None
    lat = np.full(len(batch), np.nan)
    lon = np.full(len(batch), np.nan)
    if len(trips.order):
        unknown = np.isnan(trips.lat) | np.isnan(trips.lon)
        lat[trips.order] = np.where(unknown, trips.veh_lat, trips.lat)
        lon[trips.order] = np.where(unknown, trips.veh_lon, trips.lon)
    lat[~bare] = np.nan
    lon[~bare] = np.nan
    carried = Batch.from_columns(vehicle=batch.vehicle, time=batch.time, lat=lat, lon=lon)
    return locate(carried, the_plan.bundle.zones, the_plan.grids)


def _inherited_zones(
    inherited: Located,
    view: ResolvedView,
    bare: BoolArray,
    r: npt.NDArray[np.uint64],
    masks: tuple[BoolArray, BoolArray, BoolArray],
) -> tuple[BoolArray, BoolArray, BoolArray, BoolArray]:
    """``(zone_hit, prohibited, sensitive)`` with the ``bare`` rows (live, no position of
    their own) judged on their inherited position at the view's grid, and the bare rows
    whose vehicle has no known position this trip (``unplaced``: fail closed, their
    location-derived fields are removed). Cites ``zone.authorised`` in ``r``."""
    zone_hit, prohibited, sensitive = masks
    layer = inherited.layer(view.grid_m)
    placed = bare & inherited.positioned
    full = layer.level
    level = layer.levels_excluding(view.authorised) if view.authorised else full
    if view.authorised:
        _set(r, placed & layer.hits_any(view.authorised), _BIT[RuleId.ZONE_AUTHORISED])
    return (
        zone_hit | (placed & (full != ZoneLevel.NONE)),
        prohibited | (placed & (level == ZoneLevel.PROHIBITED)),
        sensitive | (placed & (level == ZoneLevel.SENSITIVE)),
        bare & ~inherited.positioned,
    )


class _ConsentIndex:
    """Per-row look-ups of a batch's consents, from the book's sorted columns."""

    def __init__(self, batch: Batch, trips: _Trips, state: StateSnapshot) -> None:
        n = len(batch)
        self.time = batch.time
        self.now = state.now
        self.book = state.consents.columns()
        self.lo = np.zeros(n, dtype=np.intp)
        self.count = np.zeros(n, dtype=np.intp)
        self.trip_start = np.full(n, np.inf)
        if len(trips.order):
            self.trip_start[trips.order] = trips.start[trips.seg]
        vins = self.book.vins
        if len(vins) and len(trips.order):
            names = trips.names  # the batch's vehicles, once each
            pos = np.minimum(np.searchsorted(vins, names), len(vins) - 1)
            found = vins[pos] == names
            lo = np.where(found, self.book.lo[pos], 0)
            count = np.where(found, self.book.count[pos], 0)
            self.lo[trips.order] = lo[trips.veh]
            self.count[trips.order] = count[trips.veh]

    def _pairs(
        self, purposes: Iterable[str], rows: BoolArray
    ) -> tuple[IntpArray, IntpArray, BoolArray] | None:
        """Every (row, consent) pair of ``rows`` for one of ``purposes``."""
        idx = np.flatnonzero(rows & (self.count > 0))
        if idx.size == 0:
            return None
        cnt = self.count[idx]
        pair_row = np.repeat(idx, cnt)
        offsets = np.arange(int(cnt.sum())) - np.repeat(np.cumsum(cnt) - cnt, cnt)
        c = np.repeat(self.lo[idx], cnt) + offsets
        return pair_row, c, self.book.purpose_mask(purposes)[c]

    def lookup(self, purposes: Iterable[str], rows: BoolArray) -> npt.NDArray[np.object_]:
        """Per row (where ``rows``): id of the consent (smallest id) for one of ``purposes``
        active both at the row's time and at the decision time, else ``None``: an expired or
        withdrawn consent covers nothing decided afterwards, whatever the record's time. A
        consent granted after the row's trip began covers none of that trip: its stable
        pseudonym would continue the trip's per-trip views and name what went before."""
        out = np.full(len(rows), None, dtype=object)
        pairs = self._pairs(purposes, rows)
        if pairs is None:
            return out
        pair_row, c, wanted = pairs
        book = self.book
        t = self.time[pair_row]
        now = self.now
        active = wanted & (book.start[c] <= t) & (t < book.end[c])
        active &= (book.start[c] <= now) & (now < book.end[c])
        active &= book.start[c] <= self.trip_start[pair_row]
        pair_row, c = pair_row[active], c[active]
        if pair_row.size == 0:
            return out
        rows_u, first = np.unique(pair_row, return_index=True)
        out[rows_u] = book.ids[c[first]]
        return out

    def began_under(self, purposes: Iterable[str], rows: BoolArray) -> BoolArray:
        """Per row (where ``rows``): a consent for one of ``purposes`` held when the row's
        trip began (it may have lapsed since: the trip then had views under the stable
        pseudonym)."""
        out = np.zeros(len(rows), dtype=bool)
        pairs = self._pairs(purposes, rows)
        if pairs is None:
            return out
        pair_row, c, wanted = pairs
        start = self.trip_start[pair_row]
        held = wanted & (self.book.start[c] <= start) & (start < self.book.end[c])
        out[pair_row[held]] = True
        return out


def _downsample(trips: _Trips, ok: BoolArray, interval: float, seeds: FloatArray) -> BoolArray:
    """Per sorted position: sent under ``interval`` (greedy, per vehicle, in time order)."""
    if interval <= 0:
        return ok.copy()
    sent = np.zeros(len(ok), dtype=bool)
    pos = np.flatnonzero(ok)
    if pos.size == 0:
        return sent
    veh = trips.veh[pos]
    t = trips.time[pos]
    counts = np.bincount(veh, minlength=len(seeds))
    single = counts[veh] == 1
    sent[pos[single]] = t[single] >= seeds[veh[single]] + interval
    multi = np.flatnonzero(~single)
    last = seeds.tolist()
    for k, vc, tt in zip(pos[multi].tolist(), veh[multi].tolist(), t[multi].tolist(), strict=True):
        if tt >= last[vc] + interval:
            sent[k] = True
            last[vc] = tt
    return sent


def _last_sent_seeds(trips: _Trips, state: StateSnapshot, sub_id: str) -> FloatArray:
    """Per vehicle code: when the subscriber was last sent a record of it (-inf: never)."""
    seeds: FloatArray = state.sent_times(sub_id).take(trips.codes, (-np.inf,))[:, 0]
    return seeds


def _record_last_sent(
    trips: _Trips,
    sent: BoolArray,
    seeds: FloatArray,
    sub_id: str,
    index: VehicleIndex,
    out: dict[str, SentTimes],
) -> None:
    pos = np.flatnonzero(sent)
    if pos.size == 0:
        return
    veh = trips.veh[pos]
    best = seeds.copy()
    np.maximum.at(best, veh, trips.time[pos])
    codes = np.unique(veh)
    out[sub_id] = SentTimes.of_codes(index, trips.codes[codes], best[codes])


def _gate(
    trips: _Trips,
    ok: BoolArray,
    out_pos: BoolArray,
    view: ResolvedView,
    the_plan: Plan,
    state: StateSnapshot,
    counted: list[tuple[str, int, ExportDataClass, str]],
) -> tuple[IntpArray, GateResult]:
    """Cross-border gate for the sorted positions ``ok``, taken in (time, row) order: the
    sorted positions in that order, and the gate's per-record result. Arrival breaks a tie
    in time, never the vehicle's place in the batch, so cutting a stream into batches
    changes nobody's turn at a threshold."""
    pos = np.flatnonzero(ok)
    if pos.size == 0:
        return pos, GateResult((), (), (), ())
    pos = pos[np.lexsort((trips.order[pos], trips.time[pos]))]
    result = crossborder_gate(
        view.subscriber,
        the_plan.bundle.rules.crossborder,
        the_plan.day,
        the_plan.year,
        state.crossborder,
        trips.vehicles[trips.veh[pos]].tolist(),
        out_pos[trips.order[pos]].tolist(),
    )
    counted.extend(result.counted)
    return pos, result


def _held_vehicles(trips: _Trips, state: StateSnapshot) -> IntpArray:
    """Per held view of ``state``: its vehicle's code in ``trips``, -1 if not in the batch."""
    held = state.held
    if len(held) == 0 or len(trips.order) == 0:
        return np.full(len(held), -1, dtype=np.intp)
    numbers = state.vehicles.codes(held.vehicle.tolist())
    code_of = np.full(len(state.vehicles), -1, dtype=np.intp)
    code_of[trips.codes] = np.arange(len(trips.codes))
    out: IntpArray = code_of[numbers]
    return out


def _settle_held(
    trips: _Trips,
    state: StateSnapshot,
    held_veh: IntpArray,
    sub_id: str,
    trims: tuple[float, float],
    version: str,
) -> tuple[IntpArray, IntpArray]:
    """Indices (into ``state.held``) of the views held from earlier batches for ``sub_id``
    that this batch releases, and of those it discards (their trip ended). ``trims``: the
    view's trim, and the one of views under a per-trip pseudonym. A view that is
    :func:`_stale` under the policy ``version`` is discarded, never released."""
    held = state.held
    empty = np.empty(0, dtype=np.intp)
    if len(held) == 0 or len(trips.order) == 0:
        return empty, empty
    mine = np.flatnonzero(held.subscriber == sub_id)
    if mine.size == 0:
        return empty, empty
    code = held_veh[mine]
    present = code >= 0
    mine, code = mine[present], code[present]  # vehicles without a record here: untouched
    if mine.size == 0:
        return empty, empty
    seg_veh = trips.veh[trips.first]
    k = np.searchsorted(seg_veh, code)  # each vehicle's first segment in the batch
    same = trips.cont[k] & (held.trip_start[mine] == trips.start[k])
    lo = trips.first[k]
    cnt = np.where(same, trips.last[k] - lo + 1, 0)
    pair = np.repeat(np.arange(mine.size), cnt)
    offsets = np.arange(int(cnt.sum())) - np.repeat(np.cumsum(cnt) - cnt, cnt)
    j = np.repeat(lo, cnt) + offsets
    per_trip = [held.views[i].transforms.get("pseudonym") == "per-trip" for i in mine.tolist()]
    need = np.where(np.asarray(per_trip, dtype=bool), max(trims), trims[0])
    with np.errstate(invalid="ignore"):
        far = distance_m(held.lat[mine][pair], held.lon[mine][pair], trips.lat[j], trips.lon[j])
        hit = far >= need[pair]
    released = np.zeros(mine.size, dtype=bool)
    released[pair[hit]] = True
    stale = np.array([_stale(held.views[i], state, version) for i in mine.tolist()], dtype=bool)
    released &= ~stale
    discarded = ~same | stale | (~released & trips.ended[k])
    return mine[released], mine[discarded]


def _stale(view: HeldView, state: StateSnapshot, version: str) -> bool:
    """A held view that may no longer go out as it was decided: the policy changed since
    (its view was shaped by the old one), or the consent it relied on no longer holds
    (releasing it is a decision after the withdrawal or expiry)."""
    if view.view.get("policy_version") != version:
        return True
    if RuleId.PI_TRAJECTORY_CONSENT.value not in view.rules or not view.basis:
        return False
    consent_id = view.basis.split(",")[0]
    for consent in state.consents.for_vehicle(view.vehicle):
        if consent.id == consent_id:
            return not consent.active_at(state.now)
    return True


def sweep(state: StateSnapshot, bundle: PolicyBundle, now: float) -> StateDelta:
    """Discard held views whose trip has ended by silence: no record for ``split_gap_s``.

    The service calls this periodically for vehicles that stopped sending; a held view is
    never kept past the end of its trip.
    """
    gap = bundle.rules.trips.split_gap_s
    gone: list[int] = []
    for i, view in enumerate(state.held):
        trip = state.trips.get(view.vehicle)
        if (
            trip is None
            or trip.ended
            or now - trip.last_time > gap
            or view.trip_start != trip.start_time
        ):
            gone.append(i)
    return StateDelta(discarded=tuple(state.held.views[i] for i in gone), settled=tuple(gone))
