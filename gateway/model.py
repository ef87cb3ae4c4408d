"""Shapes the stages share.

* :class:`Envelope` — one MQTT message as received; nothing after ``ingest/`` sees paho types.
* :class:`DeadInput` — an input (payload or record) that cannot be used, as the batch stage
  hands it to the commit.
* :class:`Consent` — a vehicle's consent for one purpose, as the store keeps it and the
  decision engine reads it.
* :class:`Batch` — a micro-batch of decoded records as columns (numpy arrays), with a
  per-row status and error code. Stages filter by marking rows, never by raising.

The fan-out to (record × subscriber) views has its own shape, defined where it happens.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]


class Consent(NamedTuple):
    """A vehicle's consent for one purpose, as Unix times: active from ``granted`` until
    ``expires`` or ``revoked`` (a withdrawal, final), whichever comes first.

    ``vehicle`` is the vehicle as the holder of the consent keys it: a keyed reference in
    the store (never the VIN), the VIN in the decision engine's
    :class:`~gateway.state.snapshot.ConsentBook`. The bundle's ``consents.yaml`` is read into
    its own document model (:class:`gateway.policy.schema.Consent`, dates and a VIN) and
    converted to this. (A book stores consents as plain tuples: the garbage collector stops
    tracking those, but never a named tuple, which matters with a consent per vehicle and
    purpose.)
    """

    id: str
    vehicle: str
    purpose: str
    granted: float
    expires: float
    revoked: float | None = None

    @property
    def end(self) -> float:
        """The first instant at which the consent no longer holds."""
        return self.expires if self.revoked is None else min(self.expires, self.revoked)

    def active_at(self, when: float) -> bool:
        """True if granted, unexpired and not revoked at Unix time ``when``."""
        return self.granted <= when < self.end


class Datum(IntEnum):
    """The datum a row's coordinates are in. ``NONE``: the row holds no usable position."""

    NONE = 0
    WGS84 = 1
    GCJ02 = 2

    @property
    def label(self) -> str:
        """Label used in every output, e.g. ``"GCJ-02"``."""
        return _DATUM_LABELS[self]


_DATUM_LABELS = {Datum.NONE: "none", Datum.WGS84: "WGS-84", Datum.GCJ02: "GCJ-02"}


class RowStatus(IntEnum):
    """Where a row stands: usable, or rejected (never shared) with an :class:`ErrorCode`."""

    OK = 0
    REJECTED = 1


class ErrorCode(IntEnum):
    """Why a row is rejected. Stable numbers: they are stored and exported."""

    OK = 0
    # coordinates
    MISSING_COORDINATE = 1
    NON_NUMERIC_COORDINATE = 2
    NON_FINITE_COORDINATE = 3
    COORDINATE_OUT_OF_RANGE = 4
    OUTSIDE_DATUM_AREA = 5
    # record shape
    NOT_AN_OBJECT = 20
    MISSING_TIMESTAMP = 21
    BAD_TIMESTAMP = 22
    MISSING_VEHICLE_ID = 23
    VEHICLE_ID_MISMATCH = 24
    INVALID_VIN = 25
    TIMESTAMP_IN_FUTURE = 26
    TIMESTAMP_TOO_OLD = 27

    @property
    def reason(self) -> str:
        """Short machine-readable reason, e.g. ``"non-finite-coordinate"``."""
        return self.name.lower().replace("_", "-")


@dataclass(frozen=True, slots=True)
class Envelope:
    """One message as received from the broker.

    ``ack`` acknowledges it to the broker; the service calls it only after the message's
    audit entries and outbox rows are committed.
    """

    topic: str
    payload: bytes
    received_at: float
    message_id: int = 0
    ack: Callable[[], None] | None = None


@dataclass(frozen=True, slots=True)
class DeadInput:
    """An input (payload or record) that cannot be used: audited once, kept, announced."""

    time: float
    reason: str
    topic: str
    payload: bytes
    vehicle_ref: str | None
    message_id: str


@dataclass(slots=True)
class Batch:
    """A micro-batch of records as columns.

    ``lat``/``lon``/``alt`` are float64 (NaN where absent), ``time`` is Unix seconds
    (float64), ``datum`` a :class:`Datum` code per row, ``status`` a :class:`RowStatus` and
    ``error`` an :class:`ErrorCode` per row. ``vehicle`` holds the vehicle id as received
    (object array). ``source`` is the index of the envelope each row came from; ``msg_id`` the
    record's own message id where it sent one (object array, ``None`` where absent; ``None``
    for the column means no row had one). ``signals`` holds every other signal as one column
    per VSS path (object arrays, ``None`` where a row lacks the signal).
    """

    vehicle: npt.NDArray[np.object_]
    time: FloatArray
    lat: FloatArray
    lon: FloatArray
    alt: FloatArray
    datum: npt.NDArray[np.uint8]
    status: npt.NDArray[np.uint8]
    error: npt.NDArray[np.uint16]
    source: npt.NDArray[np.int64]
    msg_id: npt.NDArray[np.object_] | None = None
    signals: dict[str, npt.NDArray[Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.vehicle)
        for name in ("time", "lat", "lon", "alt", "datum", "status", "error", "source"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"column {name} has {len(getattr(self, name))} rows, expected {n}")
        if self.msg_id is not None and len(self.msg_id) != n:
            raise ValueError(f"column msg_id has {len(self.msg_id)} rows, expected {n}")
        for name, column in self.signals.items():
            if len(column) != n:
                raise ValueError(f"signal {name} has {len(column)} rows, expected {n}")

    def __len__(self) -> int:
        return len(self.vehicle)

    @classmethod
    def from_columns(
        cls,
        *,
        vehicle: Any,
        time: Any,
        lat: Any,
        lon: Any,
        alt: Any = None,
        datum: Datum = Datum.WGS84,
        source: Any = None,
        msg_id: Any = None,
        signals: Mapping[str, Any] | None = None,
    ) -> Batch:
        """Build a batch from array-likes; every row starts OK. ``alt`` defaults to NaN."""
        veh = np.asarray(vehicle, dtype=object)
        n = len(veh)
        lat_a = np.asarray(lat, dtype=np.float64).reshape(n)
        lon_a = np.asarray(lon, dtype=np.float64).reshape(n)
        alt_a = np.full(n, np.nan) if alt is None else np.asarray(alt, dtype=np.float64).reshape(n)
        return cls(
            vehicle=veh,
            time=np.asarray(time, dtype=np.float64).reshape(n),
            lat=lat_a,
            lon=lon_a,
            alt=alt_a,
            datum=np.full(n, int(datum), dtype=np.uint8),
            status=np.zeros(n, dtype=np.uint8),
            error=np.zeros(n, dtype=np.uint16),
            source=np.arange(n, dtype=np.int64) if source is None else np.asarray(source, np.int64),
            msg_id=None if msg_id is None else np.asarray(msg_id, dtype=object),
            signals={k: np.asarray(v) for k, v in (signals or {}).items()},
        )

    @property
    def ok(self) -> BoolArray:
        """Mask of rows still usable."""
        ok: BoolArray = self.status == RowStatus.OK
        return ok

    def take(self, index: npt.NDArray[np.intp] | BoolArray) -> Batch:
        """A new batch holding the selected rows (copies)."""
        return Batch(
            vehicle=self.vehicle[index],
            time=self.time[index],
            lat=self.lat[index],
            lon=self.lon[index],
            alt=self.alt[index],
            datum=self.datum[index],
            status=self.status[index],
            error=self.error[index],
            source=self.source[index],
            msg_id=None if self.msg_id is None else self.msg_id[index],
            signals={k: v[index] for k, v in self.signals.items()},
        )
