"""``icvgw policy explain``: what each subscriber would receive for a record, and why."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from gateway.cli.main import app
from gateway.explain import explain, parse_time
from gateway.keys import init_keys
from gateway.pipeline.shape import keyed_pseudonym
from gateway.policy.loader import load_bundle

runner = CliRunner()

VIN = "LSVAU2181P2100001"
RECORD = {
    "Vehicle": {
        "VehicleIdentification": {"VIN": VIN},
        "CurrentLocation": {
            "Timestamp": "2026-01-15T02:00:00Z",
            "Latitude": 31.2304,
            "Longitude": 121.4737,
            "Altitude": 12.5,
            "Heading": 93.0,
        },
        "Speed": 42.0,
    },
    "bms_soc": 71.5,
    "oem_secret": 1,
}


def write(tmp_path: Path, payload: Any, name: str = "record.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(payload))
    return path


def explain_json(*args: str) -> list[dict[str, Any]]:
    result = runner.invoke(app, ["policy", "explain", "--format", "json", *args])
    assert result.exit_code == 0, result.output
    items: list[dict[str, Any]] = json.loads(result.stdout)
    return items


def test_json_lists_every_subscriber_with_decision_rules_and_output(tmp_path: Path) -> None:
    items = explain_json(str(write(tmp_path, RECORD)))
    assert [i["subscriber"] for i in items] == [
        "mapco-nav",
        "insureco-ubi",
        "sh-traffic",
        "oem-hq-de",
    ]
    assert all(set(i) == {"subscriber", "decision", "rules", "output"} for i in items)
    catalogue = set(load_bundle().rules.catalogue)
    assert all(set(i["rules"]) <= catalogue for i in items)
    mapco, insureco, traffic, oem = items
    assert mapco["decision"] == "share"
    assert mapco["output"]["location"] == {
        "datum": "WGS-84",
        "precision_m": 0,
        "lat_wgs84": 31.2304,
        "lon_wgs84": 121.4737,
        "alt_m": 12.5,
    }
    assert insureco["output"]["location"]["datum"] == "GCJ-02"
    assert insureco["output"]["location"]["precision_m"] == 1000
    assert "lat_wgs84" not in insureco["output"]["location"]
    assert "pi.trip-trim" in insureco["rules"]  # held until the vehicle moves on
    assert traffic["output"]["vehicle"].startswith("pt-")  # no consent: per-trip pseudonym
    assert oem["decision"] == "redact" and oem["output"]["location"] is None
    assert "geo.mainland-only" in oem["rules"]
    for item in items:
        out = item["output"]
        assert VIN not in json.dumps(out)
        assert "oem_secret" not in out["signals"]
        assert out["message_id"] and "audit_seq" not in out


def test_json_says_on_stderr_that_the_key_is_ephemeral(tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["policy", "explain", "--format", "json", str(write(tmp_path, RECORD))]
    )
    assert result.exit_code == 0
    assert "ephemeral key" in result.stderr
    json.loads(result.stdout)  # stdout stays exactly the JSON array


def test_subscriber_option_filters_and_repeats(tmp_path: Path) -> None:
    path = str(write(tmp_path, RECORD))
    one = explain_json("--subscriber", "oem-hq-de", path)
    assert [i["subscriber"] for i in one] == ["oem-hq-de"]
    two = explain_json("-s", "sh-traffic", "-s", "mapco-nav", path)
    assert [i["subscriber"] for i in two] == ["sh-traffic", "mapco-nav"]


def test_bad_records_are_blocked_with_a_clear_reason(tmp_path: Path) -> None:
    records = [
        "not an object",
        {"Vehicle.VehicleIdentification.VIN": VIN, "Vehicle.CurrentLocation.Latitude": 31.2},
        {"Vehicle.CurrentLocation.Timestamp": 1768442400},
        {
            "Vehicle.VehicleIdentification.VIN": VIN,
            "Vehicle.CurrentLocation.Timestamp": 1768442400,
            "Vehicle.CurrentLocation.Latitude": "31.2",
            "Vehicle.CurrentLocation.Longitude": 121.4,
        },
    ]
    path = write(tmp_path, records)
    items = explain_json("-s", "mapco-nav", str(path))
    assert [(i["decision"], i["rules"], i["output"]) for i in items] == [
        ("block", ["input.invalid"], None)
    ] * 4
    table = runner.invoke(
        app, ["policy", "explain", "-s", "mapco-nav", str(path)], env={"COLUMNS": "200"}
    )
    assert table.exit_code == 0, table.output
    for reason in (
        "not-an-object",
        "missing-timestamp",
        "missing-vehicle-id",
        "non-numeric-coordinate",
    ):
        assert reason in table.stdout


def test_table_is_the_default_and_says_the_key_is_ephemeral(tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["policy", "explain", str(write(tmp_path, RECORD))], env={"COLUMNS": "200"}
    )
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "ephemeral key" in out
    for text in ("subscriber", "decision", "rules", "precision", "datum"):
        assert text in out
    assert "share (held)" in out  # insureco and sh-traffic trim trip ends
    assert "geo.raw-requires-qualification" in out and "1000 m" in out and "raw" in out
    assert '"lat_gcj02"' in out and '"schema": "icvgw.view/1"' in out


def test_keys_give_the_gateways_pseudonyms(tmp_path: Path) -> None:
    ring = init_keys(tmp_path / "keys")
    items = explain_json("--keys", str(tmp_path / "keys"), str(write(tmp_path, RECORD)))
    mapco = items[0]["output"]
    assert mapco["vehicle"] == keyed_pseudonym(ring.pseudonym_key("mapco-nav"), VIN)
    again = explain_json("--keys", str(tmp_path / "keys"), str(write(tmp_path, RECORD)))
    assert again == items  # deterministic: same pseudonyms and message ids
    result = runner.invoke(
        app, ["policy", "explain", "--keys", str(tmp_path / "keys"), str(tmp_path / "record.json")]
    )
    assert "ephemeral" not in result.stdout


def test_at_sets_the_day_expiry_is_checked_on(tmp_path: Path) -> None:
    # A vehicle without consent: RECORD's navigation consent, held when its trip began and
    # expired by 2029, would take the rest of that trip's positions with it.
    vehicle = {**RECORD["Vehicle"], "VehicleIdentification": {"VIN": "LVHRU585XN6100077"}}
    path = str(write(tmp_path, {**RECORD, "Vehicle": vehicle}))
    later = explain_json("--at", "2029-01-05T10:00:00+08:00", "-s", "mapco-nav", path)[0]
    location = later["output"]["location"]
    assert location["datum"] == "GCJ-02" and location["precision_m"] == 50
    assert "geo.raw-requires-qualification" in later["rules"]
    assert "geo.grid-floor" in later["rules"]


def test_trip_start_trims_the_first_record(tmp_path: Path) -> None:
    path = str(write(tmp_path, RECORD))
    items = explain_json("--trip-start", "-s", "insureco-ubi", path)
    assert items == [
        {
            "subscriber": "insureco-ubi",
            "decision": "block",
            "rules": ["pi.trip-trim"],
            "output": None,
        }
    ]


def test_a_trace_is_decided_record_by_record(tmp_path: Path) -> None:
    records = [
        {
            "Vehicle.VehicleIdentification.VIN": VIN,
            "Vehicle.CurrentLocation.Timestamp": 1768442400 + 60 * i,
            "Vehicle.CurrentLocation.Latitude": 31.2304 + 0.01 * i,
            "Vehicle.CurrentLocation.Longitude": 121.4737,
        }
        for i in range(3)
    ]
    items = explain_json("-s", "insureco-ubi", str(write(tmp_path, records)))
    assert [i["decision"] for i in items] == ["share", "share", "share"]
    # the first two are released by the records after them; the last is held
    assert ["pi.trip-trim" in i["rules"] for i in items] == [False, False, True]


def test_stdin(tmp_path: Path) -> None:
    result = runner.invoke(
        app,
        ["policy", "explain", "--format", "json", "-s", "oem-hq-de", "-"],
        input=json.dumps(RECORD),
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)[0]["subscriber"] == "oem-hq-de"


@pytest.mark.parametrize(
    ("args", "status", "message"),
    [
        (["-s", "nobody"], 2, "unknown subscriber 'nobody'"),
        (["--format", "xml"], 2, "--format must be table or json"),
        (["--at", "2026-01-15T10:00:00"], 2, "has no UTC offset"),
        (["--keys", "/nonexistent/keys"], 1, "key directory not readable"),
    ],
)
def test_bad_options(tmp_path: Path, args: list[str], status: int, message: str) -> None:
    result = runner.invoke(app, ["policy", "explain", *args, str(write(tmp_path, RECORD))])
    assert result.exit_code == status
    assert message in result.stderr


@pytest.mark.parametrize(
    ("content", "reason"),
    [(b"{not json", "not-json"), (b"42", "not-object"), (b"[]", "empty")],
)
def test_unusable_input_fails(tmp_path: Path, content: bytes, reason: str) -> None:
    path = tmp_path / "bad.json"
    path.write_bytes(content)
    result = runner.invoke(app, ["policy", "explain", str(path)])
    assert result.exit_code == 1
    assert reason in result.stderr
    assert explain(load_bundle(), content).dead is not None


def test_missing_file_fails(tmp_path: Path) -> None:
    result = runner.invoke(app, ["policy", "explain", str(tmp_path / "missing.json")])
    assert result.exit_code == 1
    assert "cannot read" in result.stderr


def test_parse_time() -> None:
    assert parse_time("1768442400") == 1768442400.0
    assert parse_time("2026-01-15T02:00:00Z") == 1768442400.0
    assert parse_time("2026-01-15T10:00:00+08:00") == 1768442400.0
    with pytest.raises(ValueError, match="offset"):
        parse_time("2026-01-15T10:00:00")


def test_explain_api_reports_held_records() -> None:
    result = explain(load_bundle(), json.dumps(RECORD).encode(), subscribers=["sh-traffic"])
    (item,) = result.items
    assert item.held and item.decision == "share" and item.output is not None
    assert item.datum == "GCJ-02" and item.precision_m == 50
    assert result.ephemeral and result.trip_trim == {"sh-traffic": 200}
