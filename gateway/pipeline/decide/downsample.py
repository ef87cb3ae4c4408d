"""Down-sampling (``view.downsample``): at most one record per vehicle per ``min_interval_s``.

Greedy per vehicle in time order, seeded by when the subscriber was last sent a record of
it (state carried between batches as :class:`~gateway.state.snapshot.SentTimes`).
"""

from __future__ import annotations

import numpy as np

from gateway.model import BoolArray, FloatArray
from gateway.pipeline.decide.trips import Trips
from gateway.state.snapshot import SentTimes, StateSnapshot
from gateway.state.vehicles import VehicleIndex

__all__ = ["downsample", "last_sent_seeds", "record_last_sent"]


def downsample(trips: Trips, ok: BoolArray, interval: float, seeds: FloatArray) -> BoolArray:
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


def last_sent_seeds(trips: Trips, state: StateSnapshot, sub_id: str) -> FloatArray:
    """Per vehicle code: when the subscriber was last sent a record of it (-inf: never)."""
    seeds: FloatArray = state.sent_times(sub_id).take(trips.codes, (-np.inf,))[:, 0]
    return seeds


def record_last_sent(
    trips: Trips,
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
