"""The state the decision engine reads, as an immutable snapshot, and the change it returns.

The decision functions (:mod:`gateway.pipeline.decide`) are pure: they read a
:class:`StateSnapshot` and return a :class:`StateDelta`; they never touch a store. The
service loads the snapshot for the vehicles of a micro-batch, runs the pipeline, and
persists the delta in the same store transaction as the batch's audit entries and outbox
rows. Everything here is keyed by the vehicle id as received (the VIN); the store keeps
keyed vehicle references instead (:meth:`gateway.keys.KeyRing.vehicle_ref`) and maps them
when it loads and saves.

What the snapshot holds:

* ``consents`` — a :class:`ConsentBook`: every consent of the batch's vehicles (seeded from
  the bundle's ``consents.yaml``, then kept live by the store), as Unix times.
* ``trips`` — per vehicle, the :class:`TripState` of its current trip: when and where it
  started, how far it has got from its start, its last record. Trips are split by a gap of
  ``rules.trips.split_gap_s`` or by a key-off record (:data:`KEY_OFF_SIGNAL`).
* ``last_sent`` — per subscriber, per vehicle, the time of the last record sent:
  down-sampling.
* ``crossborder`` — per (subscriber, year, data class), the distinct vehicles whose data was
  exported in that calendar year (Beijing time) and their count. Vehicles stand in for
  individuals (RULES.md §4): the count is of vehicles, an approximation — one person may
  drive several vehicles and one vehicle may carry several people.
* ``held`` — the views held back by trip-end trimming (:class:`HeldSet` of
  :class:`HeldView`).

Trip-end trimming has a latency: a view that trims the last ``N`` metres of every trip holds
each record back until the vehicle has been seen at least ``N`` metres (geodesic) away
from it, and drops it if the trip ends first. Held views are state: they leave the engine in
the delta (``Shaped.held`` for new ones), the service persists them in the same transaction,
and a later batch (or :func:`gateway.pipeline.decide.sweep`, for vehicles that went quiet)
releases or discards them. A held view is complete (its output object, rule ids and message
id were fixed when it was decided), so releasing it only emits it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt
import orjson

from gateway.jsonbytes import tight
from gateway.model import Consent
from gateway.policy import schema
from gateway.policy.schema import ExportDataClass
from gateway.state.vehicles import VehicleIndex, VehicleRows

__all__ = [
    "KEY_OFF_SIGNAL",
    "KEY_OFF_VALUES",
    "ConsentBook",
    "ConsentColumns",
    "CounterKey",
    "CrossBorderCount",
    "HeldSet",
    "HeldView",
    "PackedJson",
    "SentTimes",
    "StateDelta",
    "StateSnapshot",
    "TripState",
    "TripTable",
]

KEY_OFF_SIGNAL = "Vehicle.LowVoltageSystemState"
"""The VSS signal whose key-off values end a trip (the record carrying it is the trip's last)."""
KEY_OFF_VALUES = frozenset({"OFF", "LOCK"})
"""Values of :data:`KEY_OFF_SIGNAL` that mean the ignition is off."""

CounterKey = tuple[str, int, ExportDataClass]
"""``(subscriber id, calendar year in Beijing time, data class)`` of a cross-border count."""


@dataclass(frozen=True, slots=True, eq=False)
class ConsentColumns:
    """A :class:`ConsentBook` as sorted columns, for vectorised look-ups.

    ``vins`` is sorted and unique; the consents of ``vins[k]`` are entries
    ``lo[k] : lo[k] + count[k]`` of ``ids``/``purposes``/``start``/``end``, sorted by id.
    ``purpose_code`` numbers each entry's purpose: ``purpose_names[purpose_code[i]]``.
    """

    vins: npt.NDArray[np.str_]
    lo: npt.NDArray[np.intp]
    count: npt.NDArray[np.intp]
    ids: npt.NDArray[np.object_]
    purposes: npt.NDArray[np.object_]
    start: npt.NDArray[np.float64]
    end: npt.NDArray[np.float64]
    purpose_code: npt.NDArray[np.intp]
    purpose_names: tuple[str, ...]

    def purpose_mask(self, purposes: Iterable[str]) -> npt.NDArray[np.bool_]:
        """Entries whose purpose is one of ``purposes``."""
        wanted = [i for i, name in enumerate(self.purpose_names) if name in set(purposes)]
        out: npt.NDArray[np.bool_] = np.isin(self.purpose_code, wanted)
        return out


class ConsentBook:
    """Consents by vehicle. Immutable; :meth:`with_records` returns an updated copy.

    When several consents of a vehicle are active for a subscriber's purposes at once, the
    one with the smallest id is the one cited (deterministic).
    """

    __slots__ = ("_by_vin", "_columns")

    def __init__(self, records: Iterable[Consent] = ()) -> None:
        by_id = {r.id: r for r in records}
        by_vin: dict[str, list[tuple[Any, ...]]] = {}
        for record in sorted(by_id.values(), key=lambda r: r.id):
            by_vin.setdefault(record.vehicle, []).append(tuple(record))
        self._by_vin: Mapping[str, tuple[tuple[Any, ...], ...]] = MappingProxyType(
            {vin: tuple(recs) for vin, recs in by_vin.items()}
        )
        self._columns: ConsentColumns | None = None

    @classmethod
    def from_policy(cls, consents: Iterable[schema.Consent]) -> ConsentBook:
        """The book seeded from a bundle's consents (``consents.yaml``)."""
        return cls(
            Consent(
                c.id,
                c.vin,
                c.purpose,
                c.granted.timestamp(),
                c.expires.timestamp(),
                None if c.revoked is None else c.revoked.timestamp(),
            )
            for c in consents
        )

    @classmethod
    def by_vin(cls, consents: Iterable[Consent], vin_of: Mapping[str, str]) -> ConsentBook:
        """The book of ``consents`` as the store keeps them (under vehicle references),
        keyed by VIN instead (references mapped by ``vin_of``; others left out)."""
        return cls(c._replace(vehicle=vin_of[c.vehicle]) for c in consents if c.vehicle in vin_of)

    def __len__(self) -> int:
        return sum(len(v) for v in self._by_vin.values())

    def records(self) -> tuple[Consent, ...]:
        """Every record, by vehicle then id."""
        return tuple(map(Consent._make, (r for recs in self._by_vin.values() for r in recs)))

    def for_vehicle(self, vin: str) -> tuple[Consent, ...]:
        """The consents of one vehicle, sorted by id (empty if it has none)."""
        return tuple(map(Consent._make, self._by_vin.get(vin, ())))

    def active(self, vin: str, purposes: Iterable[str], when: float) -> Consent | None:
        """The consent (smallest id) of ``vin`` for one of ``purposes`` active at ``when``."""
        wanted = set(purposes)
        for record in self.for_vehicle(vin):
            if record.purpose in wanted and record.active_at(when):
                return record
        return None

    def with_records(self, records: Iterable[Consent]) -> ConsentBook:
        """A copy where ``records`` are added, replacing records with the same id."""
        merged = {r.id: r for r in self.records()}
        merged.update((r.id, r) for r in records)
        return ConsentBook(merged.values())

    def columns(self) -> ConsentColumns:
        """The book as sorted columns (built once, then cached)."""
        if self._columns is None:
            vins = sorted(self._by_vin)
            recs = [Consent._make(r) for vin in vins for r in self._by_vin[vin]]
            count = np.array([len(self._by_vin[v]) for v in vins], dtype=np.intp)
            names = tuple(sorted({r.purpose for r in recs}))
            number = {name: i for i, name in enumerate(names)}
            self._columns = ConsentColumns(
                vins=np.array(vins, dtype=str) if vins else np.array([], dtype=str),
                lo=(np.cumsum(count) - count).astype(np.intp),
                count=count,
                ids=np.array([r.id for r in recs], dtype=object),
                purposes=np.array([r.purpose for r in recs], dtype=object),
                start=np.array([r.granted for r in recs], dtype=np.float64),
                end=np.array([r.end for r in recs], dtype=np.float64),
                purpose_code=np.array([number[r.purpose] for r in recs], dtype=np.intp),
                purpose_names=names,
            )
        return self._columns


class TripState(NamedTuple):
    """Where a vehicle's current trip stands after the last record the gateway decided.

    ``start_time`` identifies the trip (per-trip pseudonyms are derived from it).
    ``start_lat``/``start_lon`` is the trip's first known position (NaN while none is
    known); ``max_disp_m`` the greatest geodesic distance from it reached so far (start
    trimming); ``last_lat``/``last_lon`` the last known position (this trip's, or before it
    has one where the vehicle was last seen; NaN if none is known);
    ``ended`` is true when the last record was a key-off, so the next record starts a trip.
    (A named tuple: the engine makes one per vehicle per batch.)
    """

    start_time: float
    start_lat: float
    start_lon: float
    max_disp_m: float
    last_time: float
    last_lat: float
    last_lon: float
    ended: bool = False


class TripTable(VehicleRows, Mapping[str, TripState]):
    """Trip states by vehicle (immutable): a :class:`TripState` per vehicle on access.

    Stored as a float array (:class:`VehicleRows`, the :class:`TripState` fields in order,
    ``ended`` as 0/1), so the engine reads and writes a batch's trips with array operations.
    """

    __slots__ = ()
    width = 8

    @classmethod
    def of(cls, trips: Mapping[str, TripState] | None, index: VehicleIndex) -> TripTable:
        """``trips`` as a table on ``index`` (itself if it already is one there)."""
        return cls.of_mapping(trips, index, tuple)

    def __getitem__(self, vin: str) -> TripState:
        row = self._row(vin)
        if row is None:
            raise KeyError(vin)
        start, lat0, lon0, disp, last, lat, lon, ended = row.tolist()
        return TripState(start, lat0, lon0, disp, last, lat, lon, bool(ended))


class SentTimes(VehicleRows, Mapping[str, float]):
    """When one subscriber was last sent a record of each vehicle (immutable)."""

    __slots__ = ()
    width = 1

    @classmethod
    def of(cls, times: Mapping[str, float] | None, index: VehicleIndex) -> SentTimes:
        """``times`` as a table on ``index`` (itself if it already is one there)."""
        return cls.of_mapping(times, index, lambda t: (t,))

    def __getitem__(self, vin: str) -> float:
        row = self._row(vin)
        if row is None:
            raise KeyError(vin)
        return float(row[0])


class PackedJson(Mapping[str, Any]):
    """A JSON object kept as its bytes, read as a mapping (parsed on each read).

    Held views wait in memory for tens of seconds, tens of thousands of them in a running
    fleet; a view's output object costs ~1 KB as dicts, ~0.5 KB as bytes. It is read only
    when the view is released, discarded or stored, so parsing then is cheap.
    """

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data

    @classmethod
    def of(cls, value: Mapping[str, Any]) -> PackedJson:
        """``value`` packed (itself if it already is)."""
        if isinstance(value, PackedJson):
            return value
        return cls(tight(orjson.dumps(value)))

    def parsed(self) -> dict[str, Any]:
        """A fresh dict of the object."""
        out: dict[str, Any] = orjson.loads(self.data)
        return out

    def __getitem__(self, key: str) -> Any:
        return self.parsed()[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.parsed().get(key, default)

    def __iter__(self) -> Iterator[str]:
        return iter(self.parsed())

    def __len__(self) -> int:
        return len(self.parsed())

    def __repr__(self) -> str:
        return f"PackedJson({self.data!r})"


def unpacked(value: Mapping[str, Any]) -> dict[str, Any]:
    """``value`` as a plain dict (parsed once if packed)."""
    return value.parsed() if isinstance(value, PackedJson) else dict(value)


class HeldView(NamedTuple):
    """A view held back by trip-end trimming, complete and ready to emit on release.

    ``lat``/``lon`` is the record's true WGS-84 position (or its trip's last known one) used
    for the release test; it stays in the store and is never emitted. ``trip_start``
    identifies the trip it belongs to. The remaining fields are what the audit entry and the
    outbox row need when the view is released (``decision`` is ``"share"`` or ``"redact"``)
    or discarded (it is then audited as blocked under ``pi.trip-trim``). ``view`` is a
    :class:`PackedJson` once made by the pipeline or loaded from the store (``transforms``,
    small and read by every release test, stays a dict).
    """

    subscriber: str
    vehicle: str
    trip_start: float
    time: float
    lat: float
    lon: float
    message_id: str
    decision: str
    rules: tuple[str, ...]
    transforms: Mapping[str, Any]
    precision_m: float | None
    basis: str | None
    view: Mapping[str, Any]

    @property
    def key(self) -> tuple[str, str, str]:
        """``(subscriber, vehicle, message id)``: what the store keys a held view by."""
        return (self.subscriber, self.vehicle, self.message_id)


def _objects(items: Sequence[Any]) -> npt.NDArray[np.object_]:
    """``items`` as a 1-d object array (tuples stay elements, not rows)."""
    out = np.empty(len(items), dtype=object)
    for i, item in enumerate(items):
        out[i] = item
    return out


class HeldSet:
    """Held views with the columns the release test reads (immutable).

    ``views[i]`` is described by ``subscriber[i]``, ``vehicle[i]``, ``trip_start[i]``,
    ``lat[i]``, ``lon[i]``; a :class:`StateDelta` names the views that leave by index.

    Every batch releases, keeps and adds views of its own vehicles only, but the set holds
    every vehicle's (tens of thousands in a running fleet): so each step is a whole-column
    numpy operation (``views`` is an object array), never a Python loop over the set, and
    the vehicles' numbers in a :class:`VehicleIndex` are computed once per view
    (:meth:`codes_in`) and carried along.
    """

    __slots__ = ("_codes", "_index", "lat", "lon", "subscriber", "trip_start", "vehicle", "views")

    def __init__(self, views: Iterable[HeldView] = ()) -> None:
        listed = list(views)
        self.views: npt.NDArray[np.object_] = _objects(listed)
        self.subscriber = np.array([v.subscriber for v in listed], dtype=object)
        self.vehicle = np.array([v.vehicle for v in listed], dtype=object)
        self.trip_start = np.array([v.trip_start for v in listed], dtype=np.float64)
        self.lat = np.array([v.lat for v in listed], dtype=np.float64)
        self.lon = np.array([v.lon for v in listed], dtype=np.float64)
        self._index: VehicleIndex | None = None
        self._codes: npt.NDArray[np.intp] | None = None

    def __len__(self) -> int:
        return len(self.views)

    def __iter__(self) -> Iterator[HeldView]:
        return iter(self.views.tolist())

    def codes_in(self, index: VehicleIndex) -> npt.NDArray[np.intp]:
        """Each view's vehicle number in ``index`` (numbered once, then carried along by
        :meth:`without` and :meth:`plus`: an index only grows, so a number stays true)."""
        if self._index is not index or self._codes is None:
            self._codes = index.codes(self.vehicle.tolist())
            self._index = index
        return self._codes

    def of_vehicles(self, index: VehicleIndex, codes: npt.NDArray[np.intp]) -> list[HeldView]:
        """The views of the vehicles numbered ``codes`` in ``index``, in set order."""
        if len(self.views) == 0 or len(codes) == 0:
            return []
        picked: list[HeldView] = self.views[np.isin(self.codes_in(index), codes)].tolist()
        return picked

    def without(self, index: npt.NDArray[np.intp]) -> HeldSet:
        """The set without the views at ``index``."""
        if len(index) == 0:
            return self
        keep = np.ones(len(self.views), dtype=bool)
        keep[index] = False
        out = HeldSet.__new__(HeldSet)
        out.views = self.views[keep]
        out.subscriber = self.subscriber[keep]
        out.vehicle = self.vehicle[keep]
        out.trip_start = self.trip_start[keep]
        out.lat = self.lat[keep]
        out.lon = self.lon[keep]
        out._index = self._index
        out._codes = None if self._codes is None else self._codes[keep]
        return out

    def plus(self, views: Iterable[HeldView]) -> HeldSet:
        """The set with ``views`` added."""
        extra = HeldSet(views)
        if len(extra) == 0:
            return self
        out = HeldSet.__new__(HeldSet)
        out.views = np.concatenate([self.views, extra.views])
        out.subscriber = np.concatenate([self.subscriber, extra.subscriber])
        out.vehicle = np.concatenate([self.vehicle, extra.vehicle])
        out.trip_start = np.concatenate([self.trip_start, extra.trip_start])
        out.lat = np.concatenate([self.lat, extra.lat])
        out.lon = np.concatenate([self.lon, extra.lon])
        out._index = self._index
        out._codes = None
        if self._index is not None and self._codes is not None:
            out._codes = np.concatenate([self._codes, extra.codes_in(self._index)])
        return out


@dataclass(frozen=True, slots=True)
class CrossBorderCount:
    """Distinct vehicles already exported to one recipient in one year, for one data class.

    ``count`` is the year's total; ``known`` the vehicles among it that the engine may ask
    about (the service loads the members for the batch's vehicles only).
    """

    count: int = 0
    known: frozenset[str] = frozenset()


def _frozen(mapping: Mapping[Any, Any] | None) -> Mapping[Any, Any]:
    return MappingProxyType(dict(mapping or {}))


@dataclass(frozen=True, slots=True)
class StateSnapshot:
    """Everything the decision engine reads besides the batch and the bundle.

    ``now`` is the decision time (Unix seconds): qualifications, zone authorisations and
    legal bases are checked against its Beijing date, and cross-border counts use its
    calendar year. A consent covers a record only if it is active at the record's own time
    and at ``now`` (an expired or withdrawn consent covers nothing decided afterwards).
    """

    now: float
    consents: ConsentBook = field(default_factory=ConsentBook)
    trips: Mapping[str, TripState] = field(default_factory=dict)
    last_sent: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    crossborder: Mapping[CounterKey, CrossBorderCount] = field(default_factory=dict)
    held: HeldSet = field(default_factory=HeldSet)
    vehicles: VehicleIndex = field(default_factory=VehicleIndex, compare=False, repr=False)
    """The numbering of vehicle ids the per-vehicle tables use (shared with the snapshots
    derived from this one)."""

    def __post_init__(self) -> None:
        index = self.vehicles
        object.__setattr__(self, "trips", TripTable.of(self.trips, index))
        sent = {sub: SentTimes.of(times, index) for sub, times in self.last_sent.items()}
        object.__setattr__(self, "last_sent", MappingProxyType(sent))
        object.__setattr__(self, "crossborder", _frozen(self.crossborder))

    @property
    def trip_table(self) -> TripTable:
        """``trips`` as the table it is."""
        assert isinstance(self.trips, TripTable)
        return self.trips

    def vehicle_rows(
        self, vehicles: Sequence[str]
    ) -> list[tuple[TripState | None, dict[str, float]]]:
        """Per vehicle: its trip (or ``None``) and when each subscriber was last sent a record
        of it (what the service stores per vehicle), read with one look-up per table."""
        codes = self.vehicles.codes(vehicles)
        has_trip, trips = self.trip_table.lookup(codes)
        sent = [(sub, *self.sent_times(sub).lookup(codes)) for sub in self.last_sent]
        out: list[tuple[TripState | None, dict[str, float]]] = []
        for i, (t0, lat0, lon0, disp, last, lat, lon, end) in enumerate(trips.tolist()):
            trip = (
                TripState(t0, lat0, lon0, disp, last, lat, lon, bool(end)) if has_trip[i] else None
            )
            out.append((trip, {sub: float(t[i, 0]) for sub, f, t in sent if f[i]}))
        return out

    def sent_times(self, subscriber: str) -> SentTimes:
        """``last_sent[subscriber]`` as a table (empty if nothing was sent)."""
        times = self.last_sent.get(subscriber)
        if isinstance(times, SentTimes):
            return times
        return SentTimes.empty(self.vehicles)

    def count(self, key: CounterKey) -> CrossBorderCount:
        """The cross-border count for ``key`` (zero if none is recorded)."""
        return self.crossborder.get(key, CrossBorderCount())

    def apply(
        self, delta: StateDelta, held: Iterable[HeldView] = (), *, now: float | None = None
    ) -> StateSnapshot:
        """The snapshot after ``delta`` and the new ``held`` views (what a store commit does).

        For tests, tools and ``policy explain``: it chains batches in memory exactly as the
        service chains them through its store.
        """
        index = self.vehicles
        trips = self.trip_table.merged(TripTable.of(delta.trips, index))
        last_sent: dict[str, Mapping[str, float]] = dict(self.last_sent)
        for sub, times in delta.last_sent.items():
            last_sent[sub] = self.sent_times(sub).merged(SentTimes.of(times, index))
        counts = dict(self.crossborder)
        added: dict[CounterKey, set[str]] = {}
        for sub, year, data_class, vehicle in delta.counted:
            added.setdefault((sub, year, data_class), set()).add(vehicle)
        for key, vehicles in added.items():
            old = counts.get(key, CrossBorderCount())
            fresh = vehicles - old.known
            counts[key] = CrossBorderCount(old.count + len(fresh), old.known | fresh)
        held_set = self.held.without(np.asarray(delta.settled, dtype=np.intp)).plus(held)
        return replace(
            self,
            now=self.now if now is None else now,
            trips=trips,
            last_sent=last_sent,
            crossborder=counts,
            held=held_set,
        )


@dataclass(frozen=True, slots=True)
class StateDelta:
    """What a batch changes in the state; the service persists it with the batch's audit.

    * ``trips`` — the new :class:`TripState` of every vehicle the batch touched;
    * ``last_sent`` — new down-sampling times, per subscriber, per vehicle;
    * ``counted`` — vehicles newly counted for cross-border export:
      ``(subscriber, year, data class, vehicle)``;
    * ``released`` — previously held views to emit now (and delete from the store);
    * ``discarded`` — previously held views whose trip ended before they were released:
      audit them as blocked (``pi.trip-trim``) and delete them;
    * ``settled`` — the indices, in the snapshot's :class:`HeldSet`, of the released and
      discarded views (what :meth:`StateSnapshot.apply` removes).

    Views newly held by this batch are in ``Shaped.held`` (they need the shaped output).
    """

    trips: Mapping[str, TripState] = field(default_factory=dict)
    last_sent: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    counted: tuple[tuple[str, int, ExportDataClass, str], ...] = ()
    released: tuple[HeldView, ...] = ()
    discarded: tuple[HeldView, ...] = ()
    settled: tuple[int, ...] = ()
