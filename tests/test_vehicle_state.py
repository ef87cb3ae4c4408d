"""Stored per-vehicle decision state round-trips exactly (NaN included)."""

from __future__ import annotations

import math

from gateway.state.snapshot import HeldView, TripState
from gateway.vehicle_state import decode, encode


def test_round_trip_keeps_trip_times_and_held_views() -> None:
    trip = TripState(100.0, math.nan, math.nan, 0.0, 130.0, 31.2, 121.4, ended=True)
    held = [
        HeldView(
            "insureco-ubi",
            "VIN1",
            100.0,
            120.0,
            31.2,
            121.4,
            "m1",
            "redact",
            ("pi.trip-trim",),
            {"grid_m": 1000},
            1000.0,
            None,
            {"time": "t"},
        ),
    ]
    data = encode(trip, {"sh-traffic": 125.0}, held)
    trip2, sent, held2 = decode("VIN1", data)
    assert trip2 is not None
    assert trip2.ended and trip2.start_time == 100.0 and math.isnan(trip2.start_lat)
    assert trip2[3:7] == trip[3:7]
    assert sent == {"sh-traffic": 125.0}
    assert held2 == held


def test_no_trip_and_nothing_held() -> None:
    assert decode("V", encode(None, {}, [])) == (None, {}, [])
