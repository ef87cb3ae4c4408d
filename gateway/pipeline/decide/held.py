"""Trip end trimming (RULES.md §3): records held until the vehicle has moved on.

A record is held until a later record of its trip is ``trip_trim_m`` from it
(:func:`released`); held views left at the end of a batch are state, released or discarded
by a later batch (:func:`settle_held`) or discarded when their trip ends by silence
(:func:`sweep`).
"""

from __future__ import annotations

import numpy as np

from gateway.model import BoolArray, FloatArray
from gateway.pipeline.decide.rulebits import IntpArray
from gateway.pipeline.decide.trips import Trips, distance_m
from gateway.policy.bundle import PolicyBundle
from gateway.policy.rules import RuleId
from gateway.state.snapshot import HeldView, StateDelta, StateSnapshot

__all__ = ["held_vehicles", "released", "settle_held", "sweep"]


def released(trips: Trips, cand: IntpArray, trim: FloatArray) -> BoolArray:
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


def held_vehicles(trips: Trips, state: StateSnapshot) -> IntpArray:
    """Per held view of ``state``: its vehicle's code in ``trips``, -1 if not in the batch."""
    held = state.held
    if len(held) == 0 or len(trips.order) == 0:
        return np.full(len(held), -1, dtype=np.intp)
    numbers = held.codes_in(state.vehicles)
    code_of = np.full(len(state.vehicles), -1, dtype=np.intp)
    code_of[trips.codes] = np.arange(len(trips.codes))
    out: IntpArray = code_of[numbers]
    return out


def settle_held(
    trips: Trips,
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
    here = np.flatnonzero(held_veh >= 0)  # vehicles without a record here: untouched
    mine = here[held.subscriber[here] == sub_id]
    code = held_veh[mine]
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
