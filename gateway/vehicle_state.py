"""Per-vehicle decision state as stored documents.

The decision engine reads one :class:`~gateway.state.snapshot.StateSnapshot`; the service keeps
it in memory (one worker owns its vehicles) and writes, in each batch's transaction, the
state of every vehicle the batch touched: its trip, its down-sampling times per subscriber
and its held views. On start-up the snapshot is rebuilt from these documents, so a
restarted worker continues exactly where its last commit left off.

The document holds raw positions (trip start, held views) and is stored sealed, keyed by
the vehicle's keyed reference with the VIN inside the sealed value
(:func:`gateway.store.vehicle_states.save_vehicle_state`); it is never exported and never in the
audit log.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import orjson

from gateway.state.snapshot import HeldView, PackedJson, StateSnapshot, TripState

_VERSION = 1


def _float(value: Any) -> float:
    return math.nan if value is None else float(value)


def _json(value: Mapping[str, Any]) -> Any:
    """A held view's object as the document embeds it: packed bytes as they are."""
    return orjson.Fragment(value.data) if isinstance(value, PackedJson) else dict(value)


def encode(
    trip: TripState | None, last_sent: Mapping[str, float], held: Iterable[HeldView]
) -> bytes:
    """The stored document of one vehicle (NaN is stored as null)."""
    doc = {
        "v": _VERSION,
        "trip": None if trip is None else list(trip),
        "last_sent": dict(last_sent),
        "held": [
            [
                h.subscriber,
                h.trip_start,
                h.time,
                h.lat,
                h.lon,
                h.message_id,
                h.decision,
                list(h.rules),
                _json(h.transforms),
                h.precision_m,
                h.basis,
                _json(h.view),
            ]
            for h in held
        ],
    }
    return orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)


def decode(
    vehicle: str, data: bytes, *, not_after: float = math.inf
) -> tuple[TripState | None, dict[str, float], list[HeldView]]:
    """Inverse of :func:`encode`. A trip or a last-sent time later than ``not_after`` (the
    gateway's clock plus ``rules.ingest.max_future_s``) is forgotten: a store written before
    record times were bounded may remember year 9999, which would silence the vehicle."""
    doc = orjson.loads(data)
    trip_raw = doc.get("trip")
    trip = None
    if trip_raw is not None:
        n = [_float(x) for x in trip_raw[:7]]
        trip = TripState(n[0], n[1], n[2], n[3], n[4], n[5], n[6], ended=bool(trip_raw[7]))
        if not (trip.start_time <= not_after and trip.last_time <= not_after):
            trip = None
    sent = {k: float(v) for k, v in doc.get("last_sent", {}).items()}
    held = [
        HeldView(
            subscriber=h[0],
            vehicle=vehicle,
            trip_start=_float(h[1]),
            time=_float(h[2]),
            lat=_float(h[3]),
            lon=_float(h[4]),
            message_id=h[5],
            decision=h[6],
            rules=tuple(h[7]),
            transforms=h[8],
            precision_m=None if h[9] is None else float(h[9]),
            basis=h[10],
            view=PackedJson.of(h[11]),
        )
        for h in doc.get("held", [])
    ]
    return trip, {k: t for k, t in sent.items() if t <= not_after}, held


def documents(state: StateSnapshot, vehicles: Iterable[str]) -> dict[str, bytes]:
    """The stored document of each of ``vehicles`` in ``state`` (see :func:`encode`)."""
    vins = list(vehicles)
    held: dict[str, list[HeldView]] = {}
    for view in state.held.of_vehicles(state.vehicles, state.vehicles.codes(vins)):
        held.setdefault(view.vehicle, []).append(view)
    return {
        vin: encode(trip, sent, held.get(vin, ()))
        for vin, (trip, sent) in zip(vins, state.vehicle_rows(vins), strict=True)
    }
