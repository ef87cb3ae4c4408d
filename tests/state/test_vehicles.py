"""The per-vehicle state tables: a shared, append-only numbering and immutable float rows."""

from __future__ import annotations

import math

import numpy as np
import pytest

from gateway.state.snapshot import SentTimes, StateDelta, StateSnapshot, TripState, TripTable
from gateway.state.vehicles import VehicleIndex, VehicleRows


def test_index_numbers_vehicles_in_order_of_first_sight_and_keeps_them() -> None:
    index = VehicleIndex()
    assert index.codes(["B", "A", "B"]).tolist() == [0, 1, 0]
    assert index.codes(["C", "A"]).tolist() == [2, 1]
    assert len(index) == 3
    assert (index.find("A"), index.find("Z")) == (1, -1)
    assert index.name(2) == "C"


def test_take_returns_rows_and_the_missing_row_for_absent_vehicles() -> None:
    index = VehicleIndex()
    table = SentTimes.of({"A": 5.0, "C": 7.0}, index)
    codes = index.codes(["C", "B", "A"])
    assert table.take(codes, (-math.inf,))[:, 0].tolist() == [7.0, -math.inf, 5.0]
    assert SentTimes.empty(index).take(codes, (1.5,))[:, 0].tolist() == [1.5, 1.5, 1.5]


def test_merged_replaces_and_adds_without_touching_the_original() -> None:
    index = VehicleIndex()
    old = SentTimes.of({"A": 1.0, "B": 2.0}, index)
    new = old.merged(SentTimes.of({"B": 20.0, "C": 30.0}, index))
    assert dict(old) == {"A": 1.0, "B": 2.0}
    assert dict(new) == {"A": 1.0, "B": 20.0, "C": 30.0}
    assert old.merged(SentTimes.empty(index)) is old
    assert dict(SentTimes.empty(index).merged(old)) == dict(old)


def test_tables_derived_apart_share_an_index_without_seeing_each_others_vehicles() -> None:
    index = VehicleIndex()
    base = SentTimes.of({"A": 1.0}, index)
    left = base.merged(SentTimes.of({"L": 2.0}, index))
    right = base.merged(SentTimes.of({"R": 3.0}, index))
    assert dict(left) == {"A": 1.0, "L": 2.0}
    assert dict(right) == {"A": 1.0, "R": 3.0}
    assert "L" not in right and "R" not in left and "A" in right
    with pytest.raises(KeyError):
        right["L"]


def test_merging_tables_on_different_indexes_is_refused_and_rebasing_keeps_rows() -> None:
    a, b = VehicleIndex(), VehicleIndex()
    table = SentTimes.of({"X": 1.0, "Y": 2.0}, a)
    with pytest.raises(ValueError, match="different vehicle indexes"):
        SentTimes.empty(b).merged(table)
    moved = table.rebased(b)
    assert moved.index is b and dict(moved) == {"X": 1.0, "Y": 2.0}
    assert table.rebased(a) is table


def test_of_codes_accepts_any_order() -> None:
    index = VehicleIndex()
    codes = index.codes(["A", "B", "C"])
    table = VehicleRows.of_codes(index, codes[::-1], np.array([3.0, 2.0, 1.0]))
    assert table.codes.tolist() == [0, 1, 2]
    assert table.data[:, 0].tolist() == [1.0, 2.0, 3.0]


def test_trip_table_is_a_mapping_of_trip_states() -> None:
    index = VehicleIndex()
    trip = TripState(100.0, 31.0, 121.0, 50.0, 160.0, 31.001, 121.002, True)
    table = TripTable.of({"V1": trip}, index)
    assert table["V1"] == trip and isinstance(table["V1"].ended, bool)
    assert list(table) == ["V1"] and len(table) == 1 and "V2" not in table
    assert table == {"V1": trip}
    assert "V1" in repr(table)
    assert TripTable.of(table, index) is table


def test_snapshot_apply_leaves_the_old_snapshot_as_it_was() -> None:
    trip = TripState(0.0, 31.0, 121.0, 0.0, 10.0, 31.0, 121.0)
    state = StateSnapshot(now=0.0, trips={"V1": trip}, last_sent={"s": {"V1": 10.0}})
    later = TripState(0.0, 31.0, 121.0, 90.0, 20.0, 31.001, 121.0)
    delta = StateDelta(trips={"V1": later, "V2": trip}, last_sent={"s": {"V2": 20.0}})
    after = state.apply(delta)
    assert state.trips == {"V1": trip} and after.trips == {"V1": later, "V2": trip}
    assert state.last_sent["s"] == {"V1": 10.0}
    assert after.last_sent["s"] == {"V1": 10.0, "V2": 20.0}
    assert after.vehicles is state.vehicles
    assert after.sent_times("nobody") == {}


def test_vehicle_rows_reads_each_vehicles_trip_and_sent_times() -> None:
    trip = TripState(0.0, 31.0, 121.0, 5.0, 10.0, 31.0, 121.0, True)
    state = StateSnapshot(
        now=0.0,
        trips={"V1": trip},
        last_sent={"a": {"V1": 10.0, "V2": 7.0}, "b": {"V2": 8.0}},
    )
    v1, v2, v3 = state.vehicle_rows(["V1", "V2", "V3"])
    assert v1 == (trip, {"a": 10.0}) and isinstance(v1[0].ended, bool)  # type: ignore[union-attr]
    assert v2 == (None, {"a": 7.0, "b": 8.0})
    assert v3 == (None, {})


def test_tables_compare_equal_with_nan_positions_and_against_plain_mappings() -> None:
    trip = TripState(0.0, math.nan, math.nan, 0.0, 10.0, math.nan, math.nan)
    state = StateSnapshot(now=0.0, trips={"V1": trip}, last_sent={"s": {"V1": 10.0}})
    assert state.trips == state.trips
    assert state == state.apply(StateDelta())
    assert TripTable.of({"V1": trip}, VehicleIndex()) == state.trips  # another index
    assert state.last_sent["s"] == {"V1": 10.0}
    assert state.last_sent["s"] != {"V1": 11.0}
    assert state.trips != TripTable.empty(state.vehicles)
