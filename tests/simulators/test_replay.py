"""Trace replay: CSV parsing, validation errors with file/line/column, and the messages."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest

from gateway.errors import ConfigError
from simulators.fleet import Kind
from simulators.replay import load_trace
from simulators.vin import is_valid_vin, vin_for_id

VIN = "1M8GDM9AXKP042788"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "trace.csv"
    path.write_text(text, encoding="utf-8")
    return path


def problems(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_trace(path)
    assert info.value.file == str(path)
    return [str(p) for p in info.value.problems]


def test_replay_messages_in_time_order(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "ID,Time,Lat,Lon,Speed,Heading,Altitude\n"
        f"{VIN},2026-11-28T12:00:02Z,31.2301,121.4701,36.5,90,4.5\n"
        "taxi-7,2026-11-28T20:00:00.500+08:00,31.1,121.3,,,\n"
        f"{VIN},2026-11-28T12:00:00Z,31.23,121.47,30,89.5,4.2\n"
        "\n"
        "taxi-7,1795867201.5,31.1001,121.3002,12,360,\n",
    )
    trace = load_trace(path)
    taxi = vin_for_id("taxi-7")
    assert is_valid_vin(taxi)
    assert trace.vins == {VIN: VIN, "taxi-7": taxi}
    messages = list(trace.messages())
    assert [m.at for m in messages] == [0.0, 0.5, 1.5, 2.0]
    assert all(m.kind is Kind.VALID and m.samples == 1 for m in messages)
    bodies = [orjson.loads(m.payload) for m in messages]
    assert [m.topic for m in messages] == [
        f"vehicles/{VIN}/telemetry",
        f"vehicles/{taxi}/telemetry",
        f"vehicles/{taxi}/telemetry",
        f"vehicles/{VIN}/telemetry",
    ]
    assert bodies[0] == {
        "Vehicle.VehicleIdentification.VIN": VIN,
        "Vehicle.CurrentLocation.Timestamp": "2026-11-28T12:00:00.000Z",
        "Vehicle.CurrentLocation.Latitude": 31.23,
        "Vehicle.CurrentLocation.Longitude": 121.47,
        "Vehicle.CurrentLocation.Altitude": 4.2,
        "Vehicle.CurrentLocation.Heading": 89.5,
        "Vehicle.Speed": 30.0,
        "msg_id": f"{VIN}-0",
    }
    # empty optional cells leave the signal out; +08:00 becomes UTC
    assert bodies[1] == {
        "Vehicle.VehicleIdentification.VIN": taxi,
        "Vehicle.CurrentLocation.Timestamp": "2026-11-28T12:00:00.500Z",
        "Vehicle.CurrentLocation.Latitude": 31.1,
        "Vehicle.CurrentLocation.Longitude": 121.3,
        "msg_id": f"{taxi}-0",
    }
    assert bodies[2]["Vehicle.CurrentLocation.Timestamp"] == "2026-11-28T12:00:01.500Z"
    assert bodies[2]["Vehicle.CurrentLocation.Heading"] == 0.0
    assert bodies[2]["msg_id"] == f"{taxi}-1"
    assert trace.duration == 2.0


def test_replay_shift_to_now_keeps_intervals(tmp_path: Path) -> None:
    path = write(tmp_path, f"id,time,lat,lon\n{VIN},100,31,121\n{VIN},160.25,31.001,121\n")
    start = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    stamps = [
        orjson.loads(m.payload)["Vehicle.CurrentLocation.Timestamp"]
        for m in load_trace(path).messages(shift_to=start)
    ]
    assert stamps == ["2030-01-02T03:04:05.000Z", "2030-01-02T03:05:05.250Z"]


def test_every_row_problem_is_located(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "id,time,lat,lon,speed\n"
        "a,2026-11-28T12:00:00,31,121,10\n"  # 2: no time zone
        "a,yesterday,31,121,10\n"  # 3
        "b,1795867200,91,121,10\n"  # 4: lat out of range
        "b,1795867201,31,east,10\n"  # 5
        "b,1795867202,31,121,-3\n"  # 6: negative speed
        ",1795867203,31,121,\n"  # 7: empty id
        "c,1795867204,31,121\n"  # 8: a field short
        "c,1795867205,nan,121,1\n"  # 9
        "c,1795867206,31,121,1\n"
        "c,1795867206,31.1,121,1\n",  # 11: same time twice
    )
    found = problems(path)
    assert found == [
        f"{path}:2: time: no time zone in '2026-11-28T12:00:00' (add Z or +08:00)",
        f"{path}:3: time: not ISO 8601 or Unix seconds: 'yesterday'",
        f"{path}:4: lat: 91 is outside -90..90",
        f"{path}:5: lon: not a number: 'east'",
        f"{path}:6: speed: -3 is outside 0..1000",
        f"{path}:7: id: empty",
        f"{path}:8: expected 5 fields, found 4",
        f"{path}:9: lat: not a finite number: 'nan'",
        f"{path}:11: time: 'c' already has this time (line 10)",
    ]


def test_header_problems(tmp_path: Path) -> None:
    path = write(tmp_path, "id,time,latitude,lon,lon\nx,1,31,121,121\n")
    found = problems(path)
    assert found[0].startswith(f"{path}:1: latitude: unknown column (known: id, time, lat")
    assert found[1] == f"{path}:1: lon: column given twice"
    assert found[2] == f"{path}:1: lat: required column missing"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty file: expected a header row"),
        ("id,time,lat,lon\n", "no data rows"),
        ("id,time,lat,lon\n\n\n", "no data rows"),
    ],
)
def test_empty_traces(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    assert problems(path) == [f"{path}: {message}"]


def test_not_utf8_and_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "trace.csv"
    path.write_bytes(b"id,time,lat,lon\n\xff\xfe,1,2,3\n")
    (found,) = problems(path)
    assert "not UTF-8" in found
    (found,) = problems(tmp_path / "missing.csv")
    assert "cannot read" in found


def test_problem_list_is_capped(tmp_path: Path) -> None:
    rows = "".join(f"v,{i},99,121\n" for i in range(150))
    path = write(tmp_path, "id,time,lat,lon\n" + rows)
    found = problems(path)
    assert len(found) == 101
    assert found[0] == f"{path}:2: lat: 99 is outside -90..90"
    assert found[-1] == f"{path}: ... and 50 more problems"


def test_bom_and_crlf_are_accepted(tmp_path: Path) -> None:
    path = tmp_path / "trace.csv"
    path.write_bytes(b"\xef\xbb\xbfid,time,lat,lon\r\ntaxi,5,31.2,121.4\r\n")
    (point,) = load_trace(path).points
    assert (point.time, point.lat, point.lon, point.line) == (5.0, 31.2, 121.4, 2)
