"""Trip state as named columns (gateway.pipeline.decide.trips.TripColumns)."""

from __future__ import annotations

import math

import numpy as np

from gateway.pipeline.decide.trips import TripColumns
from gateway.state.snapshot import TripState, TripTable
from gateway.state.vehicles import VehicleIndex


def test_read_names_each_stored_field_and_an_unknown_vehicle_reads_as_ended() -> None:
    index = VehicleIndex()
    stored = TripState(
        start_time=100.0,
        start_lat=31.1,
        start_lon=121.2,
        max_disp_m=42.0,
        last_time=160.0,
        last_lat=31.3,
        last_lon=121.4,
        ended=False,
    )
    table = TripTable.of({"VIN-A": stored}, index)
    cols = TripColumns.read(table, index.codes(["VIN-A", "VIN-B"]))
    for name in TripState._fields:
        assert getattr(cols, name)[0] == getattr(stored, name), name
    assert cols.ended.dtype == np.bool_
    # A vehicle without a trip: its next record starts one, nothing travelled, nothing known.
    assert cols.ended[1]
    assert cols.last_time[1] == -math.inf
    assert cols.max_disp_m[1] == 0.0
    assert all(math.isnan(getattr(cols, n)[1]) for n in ("start_time", "start_lat", "last_lon"))


def test_table_writes_each_column_to_its_field() -> None:
    index = VehicleIndex()
    codes = index.codes(["VIN-B", "VIN-A"])
    cols = TripColumns(
        start_time=np.array([1.0, 2.0]),
        start_lat=np.array([30.0, 31.0]),
        start_lon=np.array([120.0, 121.0]),
        max_disp_m=np.array([5.0, 6.0]),
        last_time=np.array([9.0, 10.0]),
        last_lat=np.array([30.5, 31.5]),
        last_lon=np.array([120.5, 121.5]),
        ended=np.array([True, False]),
    )
    table = cols.table(index, codes)
    assert table["VIN-B"] == TripState(1.0, 30.0, 120.0, 5.0, 9.0, 30.5, 120.5, True)
    assert table["VIN-A"] == TripState(2.0, 31.0, 121.0, 6.0, 10.0, 31.5, 121.5, False)
