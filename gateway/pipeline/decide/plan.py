"""The bundle resolved for one decision time (:func:`plan`): what every view may get that day.

Qualifications, authorisations and legal bases are judged once per decision time (Beijing
date), so the engine (:func:`gateway.pipeline.decide.decide`) reads settled values per view.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date

from gateway.pipeline.decide.rulebits import BIT, bits_of
from gateway.pipeline.geo import GridSpec
from gateway.policy.bundle import PolicyBundle
from gateway.policy.rules import RuleId
from gateway.policy.schema import (
    AltitudeMode,
    DerivedMode,
    ExportDataClass,
    LegalBasisKind,
    OutputDatum,
    Subscriber,
    beijing_date,
    counting_year,
)
from gateway.vss import ALTITUDE, LATITUDE

__all__ = ["Plan", "ResolvedView", "plan"]


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
    ids = list(bundle.subscribers) if subscribers is None else list(subscribers)
    views = tuple(
        _resolve(bundle, index, bundle.subscribers[sub_id], day) for index, sub_id in enumerate(ids)
    )
    return Plan(bundle=bundle, now=float(now), day=day, year=year, views=views)


def _resolve(bundle: PolicyBundle, index: int, sub: Subscriber, day: date) -> ResolvedView:
    """Subscriber ``sub``'s view (the ``index``-th) as it applies on ``day``."""
    view = sub.view
    privileged = sub.mainland and sub.qualified_on(day)
    geometry = _geometry(bundle, sub, privileged)
    derived = view.location_derived
    if derived is DerivedMode.KEEP and not (privileged and geometry.grid == 0):
        derived = DerivedMode.COARSEN
    approval = None
    if sub.cross_border:
        bases = sub.legal_bases_on(day, ExportDataClass.GEOGRAPHIC_DATA)
        approval = next(
            (b.id for b in bases if b.kind is LegalBasisKind.GEODATA_EXPORT_APPROVAL), None
        )
    data = _data_classes(bundle, sub, day)
    return ResolvedView(
        index=index,
        subscriber=sub,
        privileged=privileged,
        grid_m=float(geometry.grid),
        datum=geometry.datum,
        transform=view.datum_transform if geometry.datum is OutputDatum.GCJ02 else None,
        altitude=geometry.altitude,
        altitude_step_m=geometry.altitude_step,
        derived=derived,
        allowed=bundle.allowed_fields(sub.id) - data.withheld,
        authorised=sub.authorised_zones_on(day) if sub.mainland else frozenset(),
        cross_border=sub.cross_border,
        geo_approval=approval,
        position_rules=int(geometry.rules),
        withheld=data.withheld,
        withheld_rule=data.rule,
        sensitive=data.sensitive,
        important_basis=data.basis,
        per_trip_trim_m=max(view.trip_trim_m, bundle.rules.trips.pseudonym_trim_m),
    )


@dataclass(frozen=True, slots=True)
class _Geometry:
    grid: float
    datum: OutputDatum
    altitude: AltitudeMode
    altitude_step: float | None
    rules: int


def _geometry(bundle: PolicyBundle, sub: Subscriber, privileged: bool) -> _Geometry:
    """Grid, datum and altitude of a view (RULES.md §1): as configured for a privileged
    subscriber (``geo.raw-requires-qualification`` for raw), else at least the grid floor in
    GCJ-02 (``geo.grid-floor``, ``geo.datum-gcj02``), altitude never kept nor finer than its
    floor; the rule bits are cited whenever a position goes."""
    view = sub.view
    floor = bundle.rules.geo.grid_floor_m
    if privileged:
        grid = view.location_precision_m
        rules = (
            bits_of(RuleId.GEO_RAW_REQUIRES_QUALIFICATION)
            if grid == 0
            else bits_of(RuleId.VIEW_PRECISION)
        )
        return _Geometry(grid, view.datum, view.altitude, view.altitude_step_m, int(rules))
    asks_privilege = (
        view.raw_location or view.datum is OutputDatum.WGS84 or view.location_precision_m < floor
    )
    rules = bits_of(RuleId.VIEW_PRECISION, RuleId.GEO_GRID_FLOOR, RuleId.GEO_DATUM_GCJ02)
    if asks_privilege:
        rules |= BIT[RuleId.GEO_RAW_REQUIRES_QUALIFICATION]
    step = view.altitude_step_m
    return _Geometry(
        max(view.location_precision_m, floor),
        OutputDatum.GCJ02,
        AltitudeMode.REMOVE if view.altitude is AltitudeMode.KEEP else view.altitude,
        None if step is None else max(step, bundle.rules.geo.altitude_floor_m),
        int(rules),
    )


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
        rule = BIT[RuleId.XBORDER_IMPORTANT_DATA]
    else:
        purposes = set(sub.purposes)
        withheld = frozenset(p for p in important if not purposes & set(specs[p].purposes))
        rule = BIT[RuleId.VIEW_IMPORTANT_DATA]
    sensitive = frozenset(p for p, s in specs.items() if s.sensitive) - withheld
    return _DataClasses(withheld, int(rule), sensitive, basis if important else None)
