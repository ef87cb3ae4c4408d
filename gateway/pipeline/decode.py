"""Decode: MQTT payloads to a columnar :class:`~gateway.model.Batch`.

A payload is one JSON object or a JSON array of objects whose keys are VSS paths (flat,
``"Vehicle.Speed"``, or nested, ``{"Vehicle": {"Speed": ...}}``). OEM names are mapped to VSS
paths by the policy's alias map before anything else looks at them.

Two kinds of failure, both without raising:

* the whole payload is unusable (oversize, not JSON, not an object or array, empty array,
  more records than the bundle allows, more than :data:`MAX_FIELDS` field names, a topic
  naming a vehicle id that is not a VIN):
  a :class:`DeadLetter` for the envelope, no rows;
* one record is unusable (not an object, no vehicle id, a vehicle id that is not a VIN, no or
  bad timestamp, a coordinate that is not a number, vehicle id differs from the topic's): the
  row is in the batch, rejected with an :class:`~gateway.model.ErrorCode`, and is never shared.

A VIN is 17 characters of ISO 3779's alphabet (``0-9 A-Z`` without ``I``, ``O``, ``Q``) with
the right check digit in position 9 (GB 16735); the policy may waive the check digit
(``rules.ingest.verify_vin_check_digit``), never the alphabet or the length.

A record with neither latitude nor longitude is valid and has no position (datum ``NONE``).
Timestamps are ISO 8601 with a UTC offset (VSS style, ``...Z``) or Unix seconds as a number;
a timestamp without an offset is rejected as ambiguous. Given a ``window`` (the gateway's
clock minus ``rules.ingest.max_age_s`` to plus ``max_future_s``), a record stamped outside it
is rejected as ``TIMESTAMP_TOO_OLD`` or ``TIMESTAMP_IN_FUTURE``; whatever the window, a time
before 1970 or from year 5138 on (:data:`TIME_RANGE`) is a ``BAD_TIMESTAMP``, so every
accepted time has a four-digit RFC 3339 form in the audit log.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import orjson

from gateway.geo.coords import check_coordinates
from gateway.model import Batch, Datum, Envelope, ErrorCode, RowStatus
from gateway.policy.codes import vin_check_digit
from gateway.vss import ALTITUDE, LATITUDE, LONGITUDE, TIMESTAMP, VIN

MSG_ID = "msg_id"
_COLUMNS = frozenset({VIN, LATITUDE, LONGITUDE, ALTITUDE, TIMESTAMP, MSG_ID})

TIME_RANGE = (0.0, 1e11)
"""Record times the gateway can represent, Unix seconds: 1970-01-01 to year 5138."""

DEFAULT_MAX_PAYLOAD = 256 * 1024
DEFAULT_MAX_RECORDS = 1000
MAX_FIELDS = 256
"""Distinct field names a payload's records may have between them (the catalogue has about
60): each name is a column as long as the whole batch, so five 250 KB payloads of 20,000
names each took 1.6 GB to decode beside 2,000 ordinary records."""
MAX_CELLS = 8_000_000
"""Rows times distinct field names a batch may decode to (64 MB of column slots): above it,
:func:`decode` decodes nothing and says ``too_wide``, and the caller splits the batch (200
payloads of 250 names beside 2,000 ordinary records were 900 MB)."""


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A payload that yielded no rows: the envelope index and why."""

    source: int
    reason: str
    detail: str


@dataclass(slots=True)
class Decoded:
    """What decode produced: the rows, and the payloads that had none."""

    batch: Batch
    dead: list[DeadLetter]
    too_wide: bool = False  # more than ``max_cells``: nothing was decoded, split the batch


def topic_vehicle(topic: str) -> str | None:
    """The VIN in ``vehicles/<VIN>/telemetry``-shaped topics (second level), or None when
    there is none or it is not VIN-shaped (17 characters of ISO 3779's alphabet; the check
    digit is not looked at): a hostile id is never taken for a vehicle."""
    named = _topic_id(topic)
    return named if named is not None and is_vin(named, check_digit=False) else None


def _topic_id(topic: str) -> str | None:
    parts = topic.split("/", 2)
    return parts[1] if len(parts) >= 3 and parts[1] else None


_VIN_DIGITS: dict[str, str] = {}
"""Check digits of VINs seen (``""``: not a VIN): a fleet's VINs recur every few seconds."""
_VIN_DIGITS_MAX = 200_000
"""Entries kept at most (3.4 MB of keys); the cache starts afresh when full, so VINs
invented by a hostile sender cost memory only up to this bound."""


def is_vin(value: str, *, check_digit: bool = True) -> bool:
    """True if ``value`` is 17 characters of ISO 3779's alphabet and, with ``check_digit``,
    its position-9 check digit is right. Cheap on any string (a 30 KB one included)."""
    if len(value) != 17 or not value.isascii() or not value.isalnum():
        return False
    digit = _VIN_DIGITS.get(value)
    if digit is None:
        try:
            digit = vin_check_digit(value)
        except ValueError:
            digit = ""
        if len(_VIN_DIGITS) >= _VIN_DIGITS_MAX:
            _VIN_DIGITS.clear()
        _VIN_DIGITS[value] = digit
    return digit != "" and (not check_digit or value[8] == digit)


def decode(
    envelopes: Sequence[Envelope],
    *,
    aliases: Mapping[str, str] | None = None,
    max_payload: int = DEFAULT_MAX_PAYLOAD,
    max_records: int = DEFAULT_MAX_RECORDS,
    vehicle_from_topic: Callable[[str], str | None] | None = topic_vehicle,
    check_digit: bool = True,
    window: tuple[float, float] | None = None,
    max_cells: int | None = None,
) -> Decoded:
    """Decode envelopes into one batch. Never raises on payload content.

    With ``vehicle_from_topic`` set, a record whose vehicle id differs from the topic's (or a
    topic without one) is rejected as ``VEHICLE_ID_MISMATCH``: one vehicle cannot publish for
    another. A topic naming a vehicle id that is not a VIN (``vehicle_from_topic`` gives None
    for it, or its check digit is wrong) is dead-lettered whole (``invalid-topic-vin``). Pass
    ``None`` where there is no topic (e.g. ``policy explain``).
    ``check_digit=False`` accepts VINs whose check digit is wrong. ``window`` is the range
    of record times accepted (Unix seconds, inclusive); None accepts any in :data:`TIME_RANGE`.
    With ``max_cells``, a batch of several envelopes whose rows times distinct field names
    exceed it is not decoded (``too_wide``): each name is a column as long as the batch.
    """
    alias = aliases or {}
    records: list[Any] = []
    sources: list[int] = []
    expected: list[str | None] = []
    dead: list[DeadLetter] = []
    names: set[str] = set()
    for index, env in enumerate(envelopes):
        if len(env.payload) > max_payload:
            dead.append(DeadLetter(index, "oversize", f"{len(env.payload)} > {max_payload} bytes"))
            continue
        try:
            doc = orjson.loads(env.payload)
        except orjson.JSONDecodeError as exc:
            dead.append(DeadLetter(index, "not-json", str(exc)))
            continue
        items = doc if isinstance(doc, list) else [doc]
        if not isinstance(doc, (list, dict)):
            dead.append(DeadLetter(index, "not-object", f"payload is a JSON {type(doc).__name__}"))
            continue
        if not items:
            dead.append(DeadLetter(index, "empty", "empty JSON array"))
            continue
        if len(items) > max_records:
            dead.append(
                DeadLetter(index, "too-many-records", f"{len(items)} > {max_records} records")
            )
            continue
        fields = _field_names(items)
        if fields is None:
            dead.append(DeadLetter(index, "too-many-fields", f"more than {MAX_FIELDS} fields"))
            continue
        want = vehicle_from_topic(env.topic) if vehicle_from_topic is not None else None
        if vehicle_from_topic is not None and not _topic_names_vin(env.topic, want, check_digit):
            # the detail never echoes the id: a topic may be 64 KB of anything
            dead.append(DeadLetter(index, "invalid-topic-vin", "the topic's id is not a VIN"))
            continue
        names |= fields
        for item in items:
            records.append(item)
            sources.append(index)
            expected.append(want)
    if max_cells is not None and len(envelopes) > 1 and len(records) * len(names) > max_cells:
        return Decoded(_to_batch([], [], [], alias, _Checks(False, False, None)), [], True)
    checks = _Checks(vehicle_from_topic is not None, check_digit, window)
    return Decoded(_to_batch(records, sources, expected, alias, checks), dead)


def decode_records(
    records: Sequence[Any], aliases: Mapping[str, str] | None = None, *, check_digit: bool = True
) -> Batch:
    """Decode already-parsed records (no topic check): for tools and tests."""
    return _to_batch(
        list(records),
        list(range(len(records))),
        [None] * len(records),
        aliases or {},
        _Checks(False, check_digit, None),
    )


def _topic_names_vin(topic: str, want: str | None, check_digit: bool) -> bool:
    """False if ``topic`` names a vehicle id that is not a VIN (True if it names none)."""
    if want is None:
        return _topic_id(topic) is None
    return is_vin(want, check_digit=check_digit)


@dataclass(frozen=True, slots=True)
class _Checks:
    """What a record is checked against besides its own shape."""

    topic: bool  # its vehicle id must equal the topic's
    check_digit: bool  # its VIN's check digit must be right
    window: tuple[float, float] | None  # its time must be within (Unix seconds)
    known: dict[str, bool] = field(default_factory=dict)  # VINs seen in this call: valid?

    def vin_ok(self, vin: str) -> bool:
        """``is_vin`` with this call's check-digit setting, once per distinct VIN."""
        ok = self.known.get(vin)
        if ok is None:
            ok = self.known[vin] = is_vin(vin, check_digit=self.check_digit)
        return ok


def _to_batch(
    records: list[Any],
    sources: list[int],
    expected: list[str | None],
    alias: Mapping[str, str],
    checks: _Checks,
) -> Batch:
    n = len(records)
    vehicle = np.full(n, None, dtype=object)
    lat_in: list[Any] = [None] * n
    lon_in: list[Any] = [None] * n
    alt = np.full(n, np.nan)
    time = np.full(n, np.nan)
    msg_id = np.full(n, None, dtype=object)
    error = np.zeros(n, dtype=np.uint16)
    signals: dict[str, np.ndarray[Any, Any]] = {}

    for i, raw in enumerate(records):
        if not isinstance(raw, dict):
            error[i] = ErrorCode.NOT_AN_OBJECT
            continue
        rec = _flatten(raw, alias)
        vin = rec.get(VIN)
        ts = _timestamp(rec.get(TIMESTAMP))
        error[i] = _record_error(rec, vin, ts, expected[i], checks)
        if error[i] != ErrorCode.INVALID_VIN and isinstance(vin, str) and vin:
            vehicle[i] = vin  # a string that is not a VIN is never anyone's vehicle id
        if error[i] == ErrorCode.OK:
            time[i] = ts
        lat_in[i] = rec.get(LATITUDE)
        lon_in[i] = rec.get(LONGITUDE)
        a = rec.get(ALTITUDE)
        if isinstance(a, (int, float)) and not isinstance(a, bool):
            alt[i] = float(a)
        msg_id[i] = _msg_id(rec.get(MSG_ID))
        for key, value in rec.items():
            if key in _COLUMNS:
                continue
            column = signals.get(key)
            if column is None:
                column = signals[key] = np.full(n, None, dtype=object)
            column[i] = value

    no_position = np.fromiter(
        (la is None and lo is None for la, lo in zip(lat_in, lon_in, strict=True)), bool, n
    )
    lat, lon, coord_error = (
        check_coordinates(
            _cells([0.0 if none else v for v, none in zip(lat_in, no_position, strict=True)]),
            _cells([0.0 if none else v for v, none in zip(lon_in, no_position, strict=True)]),
        )
        if n
        else (np.empty(0), np.empty(0), np.empty(0, np.uint16))
    )
    lat[no_position] = np.nan
    lon[no_position] = np.nan
    coord_error[no_position] = ErrorCode.OK
    error = np.where(error != 0, error, coord_error).astype(np.uint16)
    datum = np.where(no_position, Datum.NONE, Datum.WGS84).astype(np.uint8)
    return Batch(
        vehicle=vehicle,
        time=time,
        lat=lat,
        lon=lon,
        alt=alt,
        datum=datum,
        status=np.where(error != 0, RowStatus.REJECTED, RowStatus.OK).astype(np.uint8),
        error=error,
        source=np.asarray(sources, dtype=np.int64),
        msg_id=msg_id,
        signals=signals,
    )


def _msg_id(value: Any) -> str | None:
    """A record's ``msg_id`` as text: a string as it is, a JSON number as its value (``2.0``
    is ``2``, as the numbers are equal), anything else none. A float is kept, not dropped:
    without it two records of one millisecond would be one record
    (:func:`gateway.pipeline.shape.record_part`)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, float) and math.isfinite(value):
        return str(int(value)) if value.is_integer() else repr(value)
    return str(value) if isinstance(value, (str, int)) else None


def _cells(values: list[Any]) -> np.ndarray[Any, Any]:
    """One object cell per record: numpy would read ``[[31.2]]`` as 31.2 and
    ``[[31.2, 121.4]]`` as two rows; a list stays a list here, which is not a number."""
    out = np.empty(len(values), dtype=object)
    for i, value in enumerate(values):
        out[i] = value
    return out


def _record_error(
    rec: Mapping[str, Any], vin: Any, ts: float | None, expected: str | None, checks: _Checks
) -> ErrorCode:
    """The first thing wrong with a record's identity or time (``OK`` if nothing)."""
    if not isinstance(vin, str) or not vin:
        return ErrorCode.MISSING_VEHICLE_ID
    if not checks.vin_ok(vin):
        return ErrorCode.INVALID_VIN
    if checks.topic and vin != expected:
        return ErrorCode.VEHICLE_ID_MISMATCH
    if TIMESTAMP not in rec:
        return ErrorCode.MISSING_TIMESTAMP
    if ts is None:
        return ErrorCode.BAD_TIMESTAMP
    if checks.window is not None and ts > checks.window[1]:
        return ErrorCode.TIMESTAMP_IN_FUTURE
    if checks.window is not None and ts < checks.window[0]:
        return ErrorCode.TIMESTAMP_TOO_OLD
    if not TIME_RANGE[0] <= ts < TIME_RANGE[1]:
        return ErrorCode.BAD_TIMESTAMP
    return ErrorCode.OK


def _field_names(items: list[Any]) -> set[str] | None:
    """The distinct (flattened) field names of the records, or None if there are more than
    :data:`MAX_FIELDS` (it stops looking as soon as there are)."""
    names: set[str] = set()
    stack: list[tuple[str, dict[str, Any]]] = [("", r) for r in items if isinstance(r, dict)]
    while stack:
        prefix, node = stack.pop()
        for key, value in node.items():
            if isinstance(value, dict) and value:
                stack.append((f"{prefix}{key}.", value))
                continue
            names.add(f"{prefix}{key}")
            if len(names) > MAX_FIELDS:
                return None
    return names


def _flatten(record: dict[str, Any], alias: Mapping[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    stack: list[tuple[str, dict[str, Any]]] = [("", record)]
    while stack:
        prefix, node = stack.pop()
        for key, value in node.items():
            path = f"{prefix}{key}"
            if isinstance(value, dict) and value and path not in alias:
                stack.append((f"{path}.", value))
            else:
                out[alias.get(path, path)] = value
    return out


def _timestamp(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        v = float(value)  # an int beyond float's range is a JSON decode error already
        return v if np.isfinite(v) else None
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            return None
        if parsed.tzinfo is None:
            return None
        return parsed.timestamp()  # year 1 or 9999 with any offset: a finite float
    return None
