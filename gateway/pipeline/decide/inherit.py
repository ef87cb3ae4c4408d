"""Positions inherited by rows without one of their own (RULES.md §3).

A record without a position is judged on its trip's last known one (or, before its trip has
one, where the vehicle was last seen), located on every grid the views use.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from gateway.geo.zones import ZoneLevel
from gateway.model import Batch, BoolArray
from gateway.pipeline.decide.plan import Plan, ResolvedView
from gateway.pipeline.decide.rulebits import BIT, set_where
from gateway.pipeline.decide.trips import Trips
from gateway.pipeline.geo import Located, locate
from gateway.policy.rules import RuleId

__all__ = ["inherit", "inherited_zones"]


def inherit(batch: Batch, located: Located, trips: Trips, the_plan: Plan) -> Located | None:
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


def inherited_zones(
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
        set_where(r, placed & layer.hits_any(view.authorised), BIT[RuleId.ZONE_AUTHORISED])
    return (
        zone_hit | (placed & (full != ZoneLevel.NONE)),
        prohibited | (placed & (level == ZoneLevel.PROHIBITED)),
        sensitive | (placed & (level == ZoneLevel.SENSITIVE)),
        bare & ~inherited.positioned,
    )
