"""Trips: a batch's live rows in (vehicle, time, row) order, cut into trips (RULES.md §3).

A trip ends at a key-off record or a gap of ``trips.split_gap_s``; it continues the one the
state holds for its vehicle otherwise. Trip start and end trimming measure geodesic distance
from the trip's first position and from each record (:func:`distance_m`); down-sampling
picks at most one record per vehicle per interval. The state carried between batches is a
:class:`~gateway.state.snapshot.TripTable`, read and written here as named columns
(:class:`TripColumns`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from pyproj import Geod

from gateway.model import Batch, BoolArray, FloatArray
from gateway.pipeline.classify import Classified
from gateway.pipeline.decide.result import Applied
from gateway.pipeline.decide.rulebits import IntpArray
from gateway.pipeline.geo import Located
from gateway.state.snapshot import StateSnapshot, TripState, TripTable
from gateway.state.vehicles import VehicleIndex

__all__ = ["TripColumns", "Trips", "distance_m", "trips_of"]

_GEOD = Geod(ellps="WGS84")

_NO_TRIP = TripState(
    start_time=np.nan,
    start_lat=np.nan,
    start_lon=np.nan,
    max_disp_m=0.0,
    last_time=-np.inf,
    last_lat=np.nan,
    last_lon=np.nan,
    ended=True,
)
"""How a vehicle without a stored trip reads: its next record starts one."""


@dataclass(frozen=True, slots=True, eq=False)
class TripColumns:
    """Trip states of many vehicles as columns, one per :class:`TripState` field."""

    start_time: FloatArray
    start_lat: FloatArray
    start_lon: FloatArray
    max_disp_m: FloatArray
    last_time: FloatArray
    last_lat: FloatArray
    last_lon: FloatArray
    ended: BoolArray

    @classmethod
    def read(cls, table: TripTable, codes: IntpArray) -> TripColumns:
        """The trips of vehicle numbers ``codes``; a vehicle without one reads as ended."""
        data = table.take(codes, _NO_TRIP)
        col = dict(zip(TripState._fields, data.T, strict=True))
        return cls(
            start_time=col["start_time"],
            start_lat=col["start_lat"],
            start_lon=col["start_lon"],
            max_disp_m=col["max_disp_m"],
            last_time=col["last_time"],
            last_lat=col["last_lat"],
            last_lon=col["last_lon"],
            ended=col["ended"] != 0,
        )

    def table(self, index: VehicleIndex, codes: IntpArray) -> TripTable:
        """The columns as a table: row ``i`` is the trip of vehicle number ``codes[i]``."""
        data = np.column_stack([getattr(self, name) for name in TripState._fields])
        return TripTable.of_codes(index, codes, data)


@dataclass(frozen=True, slots=True, eq=False)
class Trips:
    """The live rows in (vehicle, time, row) order, split into trip segments.

    ``vehicles`` are the batch's vehicle ids, sorted and unique (also as a string array,
    ``names``, a list, ``vehicle_list``, and their state numbers, ``codes``). Arrays indexed by
    sorted position: ``order`` (row index), ``veh`` (vehicle code), ``time``, ``seg`` (segment),
    ``lat``/``lon`` (position carried forward within the trip, NaN while unknown),
    ``veh_lat``/``veh_lon`` (the vehicle's last known position, across trips), ``disp``
    (distance from the trip's first position, 0 while unknown). Per segment: ``first``/``last``
    sorted positions, ``cont`` (continues the state's trip), ``ended`` (the trip ends inside the
    batch), ``start`` (trip start time), ``state_disp`` (distance already reached before the
    batch). ``new_state``: the vehicles' trips after the batch.
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
    new_state: TripTable

    def by_row(self, n: int, values: FloatArray, fill: float) -> FloatArray:
        """``values`` (one per sorted position) at their rows of an ``n``-row batch, ``fill``
        at the rows without a trip (rejected)."""
        out = np.full(n, fill)
        if len(self.order):
            out[self.order] = values
        return out


@dataclass(frozen=True, slots=True, eq=False)
class _Segments:
    """Trip segments of the sorted rows. Per row: ``first_of_vehicle``, ``seg``. Per segment:
    ``first``/``last`` sorted positions, ``veh``, ``cont`` (continues the state's trip),
    ``ended`` (ends inside the batch), ``vehicle_last`` (the vehicle's last segment)."""

    first_of_vehicle: BoolArray
    seg: IntpArray
    first: IntpArray
    last: IntpArray
    veh: IntpArray
    cont: BoolArray
    ended: BoolArray
    vehicle_last: BoolArray


def _segments(
    t: FloatArray, key_off: BoolArray, veh: IntpArray, stored: TripColumns, gap: float
) -> _Segments:
    """Cut the sorted rows into trips: a new one after a key-off or a gap over ``gap``."""
    m = len(t)
    first_of_vehicle = np.ones(m, dtype=bool)
    first_of_vehicle[1:] = veh[1:] != veh[:-1]
    s_last = stored.last_time[veh]
    prev_t = np.empty(m)
    prev_t[0:1] = -np.inf
    prev_t[1:] = t[:-1]
    prev_t = np.where(first_of_vehicle, s_last, np.maximum(prev_t, s_last))
    prev_off = np.zeros(m, dtype=bool)
    prev_off[1:] = key_off[:-1]
    prev_off = np.where(first_of_vehicle, stored.ended[veh], prev_off)
    with np.errstate(invalid="ignore"):
        new_trip = prev_off | (t - prev_t > gap)
    begins = new_trip | first_of_vehicle
    first = np.flatnonzero(begins)
    last = np.concatenate((first[1:], [m]))[: len(first)] - 1
    seg_veh = veh[first]
    vehicle_last = np.ones(len(first), dtype=bool)
    vehicle_last[:-1] = seg_veh[1:] != seg_veh[:-1]
    return _Segments(
        first_of_vehicle=first_of_vehicle,
        seg=np.cumsum(begins) - 1,
        first=first,
        last=last,
        veh=seg_veh,
        cont=~new_trip[first],
        ended=~vehicle_last | key_off[last],
        vehicle_last=vehicle_last,
    )


@dataclass(frozen=True, slots=True, eq=False)
class _Positions:
    """Where the sorted rows are. Per row: ``lat``/``lon`` (carried forward within the trip),
    ``veh_lat``/``veh_lon`` (the vehicle's last known, across trips), ``disp`` (distance from
    the trip's first position). Per segment: ``lat0``/``lon0`` (first position),
    ``state_disp`` (distance reached before the batch)."""

    lat: FloatArray
    lon: FloatArray
    veh_lat: FloatArray
    veh_lon: FloatArray
    disp: FloatArray
    lat0: FloatArray
    lon0: FloatArray
    state_disp: FloatArray


def _positions(
    p_lat: FloatArray,
    p_lon: FloatArray,
    has_pos: BoolArray,
    veh: IntpArray,
    sg: _Segments,
    stored: TripColumns,
) -> _Positions:
    """Carry the sorted rows' own positions (``p_lat``/``p_lon`` where ``has_pos``) forward,
    seeded by the state's, and measure each row's distance from its trip's start."""
    m = len(p_lat)
    seg, cont, seg_veh = sg.seg, sg.cont, sg.veh
    # Carry the last known position forward inside each segment (seeded by the state's).
    last_pos = np.maximum.accumulate(np.where(has_pos, np.arange(m), -1))
    inside = last_pos >= sg.first[seg]
    at_last = np.maximum(last_pos, 0)
    seed_lat = np.where(cont, stored.last_lat[seg_veh], np.nan)
    seed_lon = np.where(cont, stored.last_lon[seg_veh], np.nan)
    lat = np.where(inside, p_lat[at_last], seed_lat[seg])
    lon = np.where(inside, p_lon[at_last], seed_lon[seg])
    # The vehicle's last known position, across trip boundaries (where it parked).
    vehicle_first = np.maximum.accumulate(np.where(sg.first_of_vehicle, np.arange(m), 0))
    own = last_pos >= vehicle_first
    # The trip's first position: the state's, else the segment's first positioned row.
    big = np.iinfo(np.intp).max
    first_pos = np.minimum.reduceat(np.where(has_pos, np.arange(m), big), sg.first)
    found = first_pos != big
    safe = np.where(found, first_pos, 0)
    use_state = cont & ~np.isnan(stored.start_lat[seg_veh])
    lat0 = np.where(use_state, stored.start_lat[seg_veh], np.where(found, p_lat[safe], np.nan))
    lon0 = np.where(use_state, stored.start_lon[seg_veh], np.where(found, p_lon[safe], np.nan))
    disp = np.nan_to_num(distance_m(lat0[seg], lon0[seg], lat, lon), nan=0.0)
    return _Positions(
        lat=lat,
        lon=lon,
        veh_lat=np.where(own, p_lat[at_last], stored.last_lat[veh]),
        veh_lon=np.where(own, p_lon[at_last], stored.last_lon[veh]),
        # Before the trip's first position, a carried one is where the vehicle parked: no
        # distance travelled on this trip.
        disp=np.where(inside | use_state[seg], disp, 0.0),
        lat0=lat0,
        lon0=lon0,
        state_disp=np.where(cont, stored.max_disp_m[seg_veh], 0.0),
    )


def trips_of(
    batch: Batch, classified: Classified, located: Located, state: StateSnapshot, gap: float
) -> Trips:
    """The batch's live rows cut into trips (a gap of ``gap`` seconds ends one), continuing
    the trips of ``state``."""
    live_rows = np.flatnonzero(batch.ok)
    unique, code = np.unique(batch.vehicle[live_rows].astype(str), return_inverse=True)
    vehicles = unique.astype(object)
    vehicle_list: list[str] = vehicles.tolist()
    codes = state.vehicles.codes(vehicle_list)
    code = code.astype(np.intp)
    order_local = np.lexsort((live_rows, batch.time[live_rows], code))
    order = live_rows[order_local]
    veh = code[order_local]
    stored = TripColumns.read(state.trip_table, codes)
    t = batch.time[order]
    key_off = classified.key_off[order]
    has_pos = located.positioned[order]
    sg = _segments(t, key_off, veh, stored, gap)
    start = _distinct_starts(
        np.where(sg.cont, stored.start_time[sg.veh], t[sg.first]),
        sg.cont,
        sg.veh,
        stored.start_time,
    )
    p_lat = np.where(has_pos, batch.lat[order], np.nan)
    p_lon = np.where(has_pos, batch.lon[order], np.nan)
    where = _positions(p_lat, p_lon, has_pos, veh, sg, stored)
    ends = sg.last[sg.vehicle_last]
    ks = np.flatnonzero(sg.vehicle_last)
    after = TripColumns(
        start_time=start[ks],
        start_lat=where.lat0[ks],
        start_lon=where.lon0[ks],
        max_disp_m=np.maximum(np.maximum.reduceat(where.disp, sg.first)[ks], where.state_disp[ks]),
        last_time=np.where(sg.cont[ks], np.maximum(t[ends], stored.last_time[sg.veh[ks]]), t[ends]),
        last_lat=np.where(np.isnan(where.lat[ends]), where.veh_lat[ends], where.lat[ends]),
        last_lon=np.where(np.isnan(where.lon[ends]), where.veh_lon[ends], where.lon[ends]),
        ended=key_off[ends],
    )
    return Trips(
        order=order,
        vehicles=vehicles,
        names=unique,
        vehicle_list=vehicle_list,
        codes=codes,
        veh=veh,
        time=t,
        seg=sg.seg,
        lat=where.lat,
        lon=where.lon,
        veh_lat=where.veh_lat,
        veh_lon=where.veh_lon,
        disp=where.disp,
        first=sg.first,
        last=sg.last,
        cont=sg.cont,
        ended=sg.ended,
        start=start,
        state_disp=where.state_disp,
        new_state=after.table(state.vehicles, codes[sg.veh[ks]]),
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


def left_start(trips: Trips, trim: float) -> BoolArray:
    """Per sorted position: the trip has been ``trim`` metres from its start by this row."""
    far = (trips.disp >= trim).astype(np.int64)
    if len(far) == 0:
        return far.astype(bool)
    cs = np.cumsum(far)
    before = cs[trips.first] - far[trips.first]
    left: BoolArray = (cs - before[trips.seg] > 0) | (trips.state_disp[trips.seg] >= trim)
    return left


def trimmed(raised: BoolArray) -> npt.NDArray[np.uint32]:
    """The applied bits of rows trimmed away: ``TRIMMED``, and ``PER_TRIP_TRIM`` where the
    per-trip-pseudonym trim applied."""
    out: npt.NDArray[np.uint32] = np.where(
        raised, Applied.TRIMMED | Applied.PER_TRIP_TRIM, Applied.TRIMMED
    ).astype(np.uint32)
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
