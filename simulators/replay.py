"""Replaying recorded traces (CSV) as vehicles.

The CSV has a header row. Columns (names case-insensitive, any order):

=============  ==========  ==============================================================
``id``         required    vehicle id; a valid VIN is used as is, anything else is mapped
                           to a deterministic valid VIN (:func:`simulators.vin.vin_for_id`)
``time``       required    ISO 8601 with a time zone (``2026-11-28T12:00:00Z``,
                           ``…+08:00``) or Unix seconds (``1795867200.5``)
``lat``        required    WGS-84 latitude, degrees, -90…90
``lon``        required    WGS-84 longitude, degrees, -180…180
``speed``      optional    km/h, >= 0
``heading``    optional    degrees clockwise from north, 0…360
``altitude``   optional    metres
=============  ==========  ==============================================================

Any other column is an error (a misspelt ``speed`` must not silently vanish). An empty cell
of an optional column leaves that signal out of the sample. Every problem is reported as a
:class:`~gateway.errors.ConfigError` problem ``file:line: column: message`` (line as in
the file, header = line 1), all at once (the first 100).

Samples are published in time order (ties in file order) as VSS payloads (see
``simulators/README.md``), one message per row; a message is due ``time − first time``
seconds after the start.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from gateway import vss
from gateway.errors import ConfigError, Problem
from simulators import payload
from simulators.fleet import Kind, Message
from simulators.vin import vin_for_id

__all__ = ["COLUMNS", "REQUIRED", "Trace", "TracePoint", "load_trace"]

REQUIRED = ("id", "time", "lat", "lon")
COLUMNS = (*REQUIRED, "speed", "heading", "altitude")
MAX_PROBLEMS = 100


@dataclass(frozen=True, slots=True)
class TracePoint:
    """One row: the VIN it is published under, Unix time (s), position and optional signals."""

    vin: str
    time: float
    lat: float
    lon: float
    speed: float | None
    heading: float | None
    altitude: float | None
    line: int


@dataclass(frozen=True)
class Trace:
    """A loaded trace: points in publishing order and the id → VIN mapping used."""

    file: str
    points: tuple[TracePoint, ...]
    vins: dict[str, str]

    @property
    def duration(self) -> float:
        """Seconds from the first to the last sample."""
        return self.points[-1].time - self.points[0].time if self.points else 0.0

    def messages(self, shift_to: datetime | None = None) -> Iterator[Message]:
        """One message per row, in time order; deterministic.

        Timestamps are the recorded ones, or, with ``shift_to``, moved so the first sample
        is at ``shift_to`` (intervals kept). ``msg_id`` is ``<VIN>-<n>``, ``n`` counting
        that vehicle's samples from 0.
        """
        if not self.points:
            return
        t0 = self.points[0].time
        offset_ms = 0 if shift_to is None else round((shift_to.timestamp() - t0) * 1000)
        seq: dict[str, int] = {}
        for p in self.points:
            n = seq.get(p.vin, 0)
            seq[p.vin] = n + 1
            sample: dict[str, object] = {
                vss.VIN: p.vin,
                vss.TIMESTAMP: payload.iso_timestamp(round(p.time * 1000) + offset_ms),
                vss.LATITUDE: p.lat,
                vss.LONGITUDE: p.lon,
            }
            if p.altitude is not None:
                sample[vss.ALTITUDE] = p.altitude
            if p.heading is not None:
                sample[vss.HEADING] = p.heading
            if p.speed is not None:
                sample[vss.SPEED] = p.speed
            sample[payload.MSG_ID] = f"{p.vin}-{n}"
            yield Message(
                payload.telemetry_topic(p.vin),
                payload.encode([sample], as_array=False),
                Kind.VALID,
                p.time - t0,
                1,
            )


class _Problems:
    def __init__(self, file: str) -> None:
        self.file = file
        self.items: list[Problem] = []
        self.more = 0

    def add(self, line: int | None, column: str, message: str) -> None:
        if len(self.items) < MAX_PROBLEMS:
            self.items.append(Problem(self.file, line, column, message))
        else:
            self.more += 1

    def raise_if_any(self) -> None:
        if not self.items:
            return
        if self.more:
            self.items.append(Problem(self.file, None, "", f"... and {self.more} more problems"))
        raise ConfigError(self.items)


def load_trace(path: str | Path) -> Trace:
    """Read and validate a trace CSV (format in the module docstring).

    Raises :class:`ConfigError` listing every problem (up to 100) with file, line and column;
    a file without a single row is an error too.
    """
    path = Path(path)
    name = str(path)
    problems = _Problems(name)
    try:
        handle = path.open(newline="", encoding="utf-8-sig")
    except OSError as exc:
        raise ConfigError(Problem(name, None, "", f"cannot read: {exc.strerror}")) from exc
    points: list[TracePoint] = []
    vins: dict[str, str] = {}
    owners: dict[str, str] = {}
    seen: dict[tuple[str, float], int] = {}
    try:
        with handle:
            reader = csv.reader(handle)
            header = next(reader, None)
            if header is None:
                raise ConfigError(Problem(name, None, "", "empty file: expected a header row"))
            columns = _header(header, problems)
            problems.raise_if_any()
            for row in reader:
                line = reader.line_num
                if not any(cell.strip() for cell in row):
                    continue
                point = _row(row, columns, line, problems)
                if point is None:
                    continue
                raw_id, p = point
                vin = vins.setdefault(raw_id, vin_for_id(raw_id))
                owner = owners.setdefault(vin, raw_id)
                if owner != raw_id:
                    problems.add(line, "id", f"ids {owner!r} and {raw_id!r} map to VIN {vin}")
                    continue
                first = seen.setdefault((vin, p.time), line)
                if first != line:
                    problems.add(line, "time", f"{raw_id!r} already has this time (line {first})")
                    continue
                points.append(
                    TracePoint(vin, p.time, p.lat, p.lon, p.speed, p.heading, p.altitude, line)
                )
    except UnicodeDecodeError as exc:
        raise ConfigError(Problem(name, None, "", f"not UTF-8 text: {exc.reason}")) from exc
    except csv.Error as exc:
        raise ConfigError(Problem(name, None, "", f"CSV syntax: {exc}")) from exc
    problems.raise_if_any()
    if not points:
        raise ConfigError(Problem(name, None, "", "no data rows"))
    points.sort(key=lambda p: (p.time, p.line))
    return Trace(name, tuple(points), vins)


def _header(header: list[str], problems: _Problems) -> dict[str, int]:
    columns: dict[str, int] = {}
    for i, raw in enumerate(header):
        col = raw.strip().lower()
        if col not in COLUMNS:
            known = ", ".join(COLUMNS)
            problems.add(1, raw.strip() or f"column {i + 1}", f"unknown column (known: {known})")
        elif col in columns:
            problems.add(1, col, "column given twice")
        else:
            columns[col] = i
    for col in REQUIRED:
        if col not in columns:
            problems.add(1, col, "required column missing")
    return columns


def _row(
    row: list[str], columns: dict[str, int], line: int, problems: _Problems
) -> tuple[str, TracePoint] | None:
    before = len(problems.items) + problems.more
    width = len(columns)
    if len(row) != width:
        problems.add(line, "", f"expected {width} fields, found {len(row)}")
        return None

    def cell(col: str) -> str:
        return row[columns[col]].strip() if col in columns else ""

    raw_id = cell("id")
    if not raw_id:
        problems.add(line, "id", "empty")
    when = _time(cell("time"), line, problems)
    lat = _number(cell("lat"), "lat", line, problems, -90.0, 90.0, required=True)
    lon = _number(cell("lon"), "lon", line, problems, -180.0, 180.0, required=True)
    speed = _number(cell("speed"), "speed", line, problems, 0.0, 1000.0)
    heading = _number(cell("heading"), "heading", line, problems, 0.0, 360.0)
    altitude = _number(cell("altitude"), "altitude", line, problems, -1000.0, 20000.0)
    if len(problems.items) + problems.more > before or when is None:
        return None
    assert lat is not None and lon is not None
    if heading == 360.0:
        heading = 0.0
    return raw_id, TracePoint("", when, lat, lon, speed, heading, altitude, line)


def _number(
    text: str,
    col: str,
    line: int,
    problems: _Problems,
    low: float,
    high: float,
    required: bool = False,
) -> float | None:
    if not text:
        if required:
            problems.add(line, col, "empty")
        return None
    try:
        value = float(text)
    except ValueError:
        problems.add(line, col, f"not a number: {text!r}")
        return None
    if not math.isfinite(value):
        problems.add(line, col, f"not a finite number: {text!r}")
        return None
    if not low <= value <= high:
        problems.add(line, col, f"{text} is outside {low:g}..{high:g}")
        return None
    return value


def _time(text: str, line: int, problems: _Problems) -> float | None:
    if not text:
        problems.add(line, "time", "empty")
        return None
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        if not math.isfinite(seconds) or not 0 <= seconds < 32_503_680_000:  # year 3000
            problems.add(line, "time", f"Unix seconds out of range: {text!r}")
            return None
        return seconds
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        problems.add(line, "time", f"not ISO 8601 or Unix seconds: {text!r}")
        return None
    if moment.tzinfo is None or moment.utcoffset() is None:
        problems.add(line, "time", f"no time zone in {text!r} (add Z or +08:00)")
        return None
    return (moment - datetime(1970, 1, 1, tzinfo=UTC)) / timedelta(seconds=1)
